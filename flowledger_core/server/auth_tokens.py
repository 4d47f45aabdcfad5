"""Bearer tokens to principals: the static token file, signed JWTs, and the files they come from.

Static token file (YAML or JSON), for small installs; tokens are stored as their SHA-256, so the
file does not hold anything a reader could present::

    tokens:
      - sha256: 3f0a...   # printf %s "$TOKEN" | sha256sum
        subject: ci-bot
        role: manager      # viewer | manager | admin | worker
        namespaces: [team-a, team-b]   # or "*"

JWT claims: ``sub``, ``role`` and ``namespaces`` (as above), with ``exp``, ``iss`` and ``aud``
required and checked. Every file (token file, public key, JWKS) is re-read when it changes (a
``stat`` per call); a changed file that does not parse is logged and the previous one kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from flowledger.errors import Unauthenticated
from flowledger_core.server.auth import Principal, principal
from flowledger_core.server.auth_settings import AuthSettings, JwtSettings

__all__ = ["Authenticator", "FileError", "StaticTokens", "token_sha256"]

log = logging.getLogger("flowledger_core.server.auth")

_T = TypeVar("_T")
_BEARER = "bearer "


class FileError(Exception):
    """A credentials file that cannot be used; the message names it and the problem."""


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class WatchedFile(Generic[_T]):
    """A file's parsed content, re-parsed when its (inode, mtime, size) changes."""

    def __init__(self, path: Path, parse: Callable[[bytes], _T]) -> None:
        self.path = path
        self._parse = parse
        self._lock = threading.Lock()
        signature = self._signature()
        self._value = self._load()
        self._loaded: object = signature
        self._refused: object = None

    def _signature(self) -> tuple[int, int, int]:
        try:
            s = os.stat(self.path)
        except OSError as exc:
            raise FileError(f"{self.path}: {exc.strerror}") from None
        return (s.st_ino, s.st_mtime_ns, s.st_size)

    def _load(self) -> _T:
        try:
            return self._parse(self.path.read_bytes())
        except OSError as exc:
            raise FileError(f"{self.path}: {exc.strerror}") from None
        except (ValueError, TypeError, yaml.YAMLError, jwt.PyJWTError) as exc:
            raise FileError(f"{self.path}: {exc}") from None

    def current(self) -> _T:
        try:
            signature = self._signature()
        except FileError as exc:
            log.error("%s; using the copy loaded before", exc)
            return self._value
        with self._lock:
            if signature == self._loaded or signature == self._refused:
                return self._value
            try:
                self._value = self._load()
            except FileError as exc:
                self._refused = signature
                log.error("%s; using the copy loaded before", exc)
                return self._value
            self._loaded, self._refused = signature, None
            log.info("reloaded %s", self.path)
            return self._value


# -- static tokens -------------------------------------------------------------------------------


class StaticTokens:
    """The token file: SHA-256 of a token → principal."""

    def __init__(self, path: Path) -> None:
        self._file = WatchedFile(path, _parse_token_file)

    def lookup(self, token: str) -> Principal | None:
        return self._file.current().get(token_sha256(token))


def _parse_token_file(raw: bytes) -> dict[str, Principal]:
    document = yaml.safe_load(raw)
    entries = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("expected a mapping with a list under 'tokens'")
    table: dict[str, Principal] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"tokens[{i}] is not a mapping")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or not all(
            c in "0123456789abcdef" for c in digest.lower()
        ):
            raise ValueError(f"tokens[{i}].sha256 must be 64 hex digits (sha256 of the token)")
        try:
            found = principal(
                entry.get("subject"), entry.get("role"), entry.get("namespaces"), "token"
            )
        except ValueError as exc:
            raise ValueError(f"tokens[{i}]: {exc}".replace("'sub'", "'subject'")) from None
        if digest.lower() in table:
            raise ValueError(f"tokens[{i}]: the same token is listed twice")
        table[digest.lower()] = found
    return table


# -- JWT -----------------------------------------------------------------------------------------

_KEY_ALGORITHMS: Sequence[tuple[type[Any], frozenset[str]]] = (
    (rsa.RSAPublicKey, frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})),
    (ec.EllipticCurvePublicKey, frozenset({"ES256", "ES384", "ES512"})),
    (ed25519.Ed25519PublicKey, frozenset({"EdDSA"})),
    (ed448.Ed448PublicKey, frozenset({"EdDSA"})),
)


def _parse_public_key(raw: bytes) -> Any:
    try:
        return serialization.load_pem_public_key(raw)
    except ValueError:
        pass
    try:
        return x509.load_pem_x509_certificate(raw).public_key()
    except ValueError:
        raise ValueError("not a PEM public key or certificate") from None


def _parse_jwks(raw: bytes) -> dict[str | None, jwt.PyJWK]:
    keys = jwt.PyJWKSet.from_dict(json.loads(raw)).keys
    by_kid: dict[str | None, jwt.PyJWK] = {key.key_id: key for key in keys}
    if len(keys) == 1:
        by_kid.setdefault(None, keys[0])  # a token without kid may use the only key
    return by_kid


class JwtVerifier:
    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        self._key = WatchedFile(settings.key_file, _parse_public_key) if settings.key_file else None
        self._jwks = WatchedFile(settings.jwks_file, _parse_jwks) if settings.jwks_file else None

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        configured = self.settings.algorithms
        if self._key is not None:
            key = self._key.current()
            for key_type, algorithms in _KEY_ALGORITHMS:
                if isinstance(key, key_type):
                    return key, [a for a in configured if a in algorithms]
            return key, []
        assert self._jwks is not None
        kid = jwt.get_unverified_header(token).get("kid")
        jwk = self._jwks.current().get(kid if isinstance(kid, str) else None)
        if jwk is None:
            raise jwt.InvalidTokenError(f"no key with kid {kid!r} in the key set")
        return jwk, list(configured)

    def verify(self, token: str) -> Principal:
        s = self.settings
        try:
            key, algorithms = self._key_for(token)
            claims = jwt.decode(
                token, key, algorithms=algorithms, audience=s.audience, issuer=s.issuer,
                leeway=s.leeway_seconds, options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _invalid(exc) from None
        try:
            return principal(claims["sub"], claims.get("role"), claims.get("namespaces"), "jwt")
        except ValueError as exc:
            raise _invalid(exc) from None


def _invalid(exc: Exception) -> Unauthenticated:
    return Unauthenticated(f"the token is not valid: {exc}", reason="TOKEN_INVALID")


# -- both ----------------------------------------------------------------------------------------


class Authenticator:
    """Metadata → principal, or UNAUTHENTICATED. Raises :class:`FileError` at construction when a
    configured file cannot be used (the service does not start)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._tokens = StaticTokens(settings.token_file) if settings.token_file else None
        self._jwt = JwtVerifier(settings.jwt) if settings.jwt else None

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        token = bearer_token(metadata)
        if self._tokens is not None:
            found = self._tokens.lookup(token)
            if found is not None:
                return found
        if self._jwt is not None and token.count(".") == 2:
            return self._jwt.verify(token)
        raise Unauthenticated("the token is not valid: unknown token", reason="TOKEN_INVALID")


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of the one ``authorization: Bearer <token>`` entry; UNAUTHENTICATED otherwise."""
    values = [v for k, v in (metadata or ()) if k == "authorization"]
    if not values:
        raise Unauthenticated(
            "no credentials: send the metadata 'authorization: Bearer <token>'",
            reason="TOKEN_MISSING",
        )
    if len(values) > 1:
        raise Unauthenticated("more than one 'authorization' entry", reason="TOKEN_INVALID")
    value = values[0]
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    if not text[: len(_BEARER)].lower() == _BEARER or not text[len(_BEARER):].strip():
        raise Unauthenticated(
            "'authorization' must be 'Bearer <token>'", reason="TOKEN_INVALID"
        )
    return text[len(_BEARER):].strip()

