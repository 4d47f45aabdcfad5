"""How the engine authenticates callers, read from the environment.

Authentication is on when a token source is configured (a static token file, a JWT key or a
JWKS file) and off only when ``ENGINE_AUTH_DISABLED=1`` says so; the engine's settings refuse
neither (a deployment cannot end up open by forgetting a variable) and both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowledger_core.server.env import Env, SettingsError

__all__ = [
    "DEFAULT_ALGORITHMS",
    "AuthSettings",
    "JwtSettings",
    "RateLimit",
    "read_auth",
]

# Asymmetric algorithms only: the engine holds public keys, never a secret that could mint
# tokens; and mixing HMAC with public-key algorithms is the classic confusion (RFC 8725 2.1).
DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                      "ES512", "EdDSA")
_SUPPORTED = frozenset(DEFAULT_ALGORITHMS)


@dataclass(frozen=True)
class JwtSettings:
    """Signed tokens: verified with ``key_file`` (a PEM public key or certificate) or the keys of
    ``jwks_file`` (picked by the token's ``kid``); ``exp``, ``iss`` and ``aud`` are required and
    checked, with ``leeway_seconds`` of clock skew."""

    issuer: str
    audience: str
    key_file: Path | None = None
    jwks_file: Path | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: float = 30.0

    def __post_init__(self) -> None:
        if (self.key_file is None) == (self.jwks_file is None):
            raise ValueError("exactly one of key_file and jwks_file")


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per subject: ``per_second`` sustained, ``burst`` at once."""

    per_second: float
    burst: int


@dataclass(frozen=True)
class AuthSettings:
    token_file: Path | None = None
    jwt: JwtSettings | None = None
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        if self.token_file is None and self.jwt is None:
            raise ValueError("authentication needs a token file or JWT settings")

    def describe(self) -> str:
        sources = []
        if self.token_file is not None:
            sources.append(f"static tokens ({self.token_file})")
        if self.jwt is not None:
            keys = self.jwt.key_file or self.jwt.jwks_file
            sources.append(f"JWT (iss {self.jwt.issuer}, aud {self.jwt.audience}, keys {keys})")
        limit = ""
        if self.rate_limit is not None:
            limit = f"; {self.rate_limit.per_second:g} requests/s per subject"
        return "bearer tokens: " + ", ".join(sources) + limit


def _jwt(env: Env, prefix: str) -> JwtSettings | None:
    key = env.file(f"{prefix}_JWT_KEY_FILE")
    jwks = env.file(f"{prefix}_JWKS_FILE")
    issuer = env.optional(f"{prefix}_JWT_ISSUER")
    audience = env.optional(f"{prefix}_JWT_AUDIENCE")
    if key is None and jwks is None:
        for name, value in (("JWT_ISSUER", issuer), ("JWT_AUDIENCE", audience)):
            if value is not None:
                raise SettingsError(
                    f"{prefix}_{name}", f"needs {prefix}_JWT_KEY_FILE or {prefix}_JWKS_FILE"
                )
        return None
    if key is not None and jwks is not None:
        raise SettingsError(f"{prefix}_JWKS_FILE", f"set it or {prefix}_JWT_KEY_FILE, not both")
    if issuer is None:
        raise SettingsError(f"{prefix}_JWT_ISSUER", "is required to check tokens' 'iss'")
    if audience is None:
        raise SettingsError(f"{prefix}_JWT_AUDIENCE", "is required to check tokens' 'aud'")
    algorithms = env.names(f"{prefix}_JWT_ALGORITHMS") or DEFAULT_ALGORITHMS
    for algorithm in algorithms:
        if algorithm not in _SUPPORTED:
            raise SettingsError(
                f"{prefix}_JWT_ALGORITHMS",
                f"{algorithm!r} is not one of {', '.join(DEFAULT_ALGORITHMS)}",
            )
    return JwtSettings(
        issuer=issuer,
        audience=audience,
        key_file=key,
        jwks_file=jwks,
        algorithms=algorithms,
        leeway_seconds=env.seconds(f"{prefix}_JWT_LEEWAY_SECONDS", 30.0),
    )


def _rate_limit(env: Env, prefix: str) -> RateLimit | None:
    per_second = env.seconds(f"{prefix}_RATE_LIMIT_PER_SECOND", 0.0)  # a non-negative number
    if per_second == 0:
        if env.optional(f"{prefix}_RATE_LIMIT_BURST") is not None:
            raise SettingsError(
                f"{prefix}_RATE_LIMIT_BURST", f"needs {prefix}_RATE_LIMIT_PER_SECOND"
            )
        return None
    default_burst = max(1, int(per_second * 2))
    burst = env.integer(f"{prefix}_RATE_LIMIT_BURST", default_burst, 1, 1_000_000)
    return RateLimit(per_second, burst)


def read_auth(env: Env, prefix: str = "ENGINE_AUTH") -> tuple[AuthSettings | None, bool]:
    """(settings, disabled): settings when a token source is configured, and whether
    ``<prefix>_DISABLED`` is set. The service's settings refuse neither or both."""
    disabled = env.flag(f"{prefix}_DISABLED")
    token_file = env.file(f"{prefix}_TOKEN_FILE")
    jwt = _jwt(env, prefix)
    limit = _rate_limit(env, prefix)
    if token_file is None and jwt is None:
        if limit is not None:
            raise SettingsError(
                f"{prefix}_RATE_LIMIT_PER_SECOND", "limits are per token: they need authentication"
            )
        return None, disabled
    return AuthSettings(token_file, jwt, limit), disabled
