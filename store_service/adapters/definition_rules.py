"""The rules of versioned definitions that both backends apply alike (pure: no storage).

Request checks (what the tables' constraints would refuse, named by field), the canonical form in
which documents are kept and returned, the transition decision, the errors, and the opaque page
tokens of listings. Sharing them is what makes the memory and Postgres answers identical.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import replace
from typing import Any

from flowledger.canonical import canonical_bytes, parse_json
from flowledger.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flowledger_core.domain import (
    DefinitionState,
    DefinitionTransitionCommand,
    NewDefinitionVersion,
    Page,
    StoredDefinition,
)

MAX_NAME_LENGTH = 128  # definitions.name CHECK
MAX_ID_LENGTH = 128  # namespace, request_id
MAX_PAGE_SIZE = 1000
_HASH = re.compile(r"[0-9a-f]{64}\Z")
_TOKEN = re.compile(r"d1\.(v)\.([1-9][0-9]{0,18})\Z|d1\.(n)\.(.+)\Z", re.DOTALL)


# -- requests ------------------------------------------------------------------------------------


def checked_new_version(new: NewDefinitionVersion) -> NewDefinitionVersion:
    """``new`` with its document in canonical form; InvalidArgument naming the field otherwise."""
    check_ref(new.namespace, new.name)
    if not _HASH.match(new.definition_hash):
        raise InvalidArgument.field(
            "definition_hash", "must be a sha256 hash: 64 lower-case hex characters"
        )
    if new.request_id is not None and not 1 <= len(new.request_id) <= MAX_ID_LENGTH:
        raise InvalidArgument.field("request_id", f"must be 1..{MAX_ID_LENGTH} characters")
    check_text(new.change_note, "change_note")
    check_text(new.created_by, "created_by")
    if new.request_id is not None:
        check_text(new.request_id, "request_id")
    return replace(new, definition_json=canonical_document(new.definition_json))


def same_request(earlier: StoredDefinition, new: NewDefinitionVersion) -> StoredDefinition:
    """The answer to a repeated request id: the version it stored, if it stored this document."""
    if (earlier.definition_json, earlier.definition_hash) != (
        new.definition_json,
        new.definition_hash,
    ):
        raise AlreadyExists(
            f"request id {new.request_id!r} already stored version {earlier.version} of "
            f"definition {new.name!r} with another document",
            reason="REQUEST_ID_REUSED",
            metadata={"name": new.name, "request_id": new.request_id or "",
                      "version": str(earlier.version)},
        )  # fmt: skip
    return earlier


def reuses(latest: StoredDefinition | None, new: NewDefinitionVersion) -> bool:
    """Whether a new version is the latest one again: the same document (as canonical JSON) and
    definition hash as the name's latest version, which is not archived. Then the latest is the
    answer (existed=True) and nothing is stored, so re-creating an unchanged document (a script
    run twice, ``flowctl run`` of the same file) makes no new version; an archived one gets a new
    DRAFT, since publishing it again needs a version that can be published."""
    return (
        latest is not None
        and latest.definition_hash == new.definition_hash
        and recanonical(latest.definition_json) == recanonical(new.definition_json)
        and latest.state is not DefinitionState.ARCHIVED
    )


def checked_transition(cmd: DefinitionTransitionCommand) -> None:
    check_ref(cmd.namespace, cmd.name)
    if cmd.version < 1:
        raise InvalidArgument.field("version", "must be >= 1")
    check_text(cmd.change_note, "change_note")
    check_text(cmd.actor, "actor")


def check_ref(namespace: str, name: str) -> None:
    if not 1 <= len(namespace) <= MAX_ID_LENGTH:
        raise InvalidArgument.field("namespace", f"must be 1..{MAX_ID_LENGTH} characters")
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise InvalidArgument.field("name", f"must be 1..{MAX_NAME_LENGTH} characters")


def check_text(value: str, field: str) -> None:
    # Postgres text cannot hold NUL; refusing it here keeps both backends' answers alike.
    if "\x00" in value:
        raise InvalidArgument.field(field, "must not contain the NUL character")


def canonical_document(text: str, field: str = "definition_json") -> str:
    """The RFC 8785 canonical text of a JSON object document (what both backends return)."""
    try:
        value = parse_json(text)
    except ValueError:
        raise InvalidArgument.field(field, "must be valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument.field(field, "must be a JSON object")
    if _has_nul(value):
        raise InvalidArgument.field(field, "contains \\u0000, which Postgres jsonb cannot store")
    try:
        return canonical_bytes(value).decode("utf-8")
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument.field(field, f"has no RFC 8785 canonical form: {exc}") from None


def recanonical(text: str) -> str:
    """A stored document (jsonb prints its own normal form) back in canonical form."""
    return canonical_bytes(parse_json(text)).decode("utf-8")


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and "\x00" in item:
            return True
    return False


# -- transitions ---------------------------------------------------------------------------------


def transition_applies(current: DefinitionState, cmd: DefinitionTransitionCommand) -> bool:
    """Whether ``cmd`` changes a version now in ``current`` (False: return it unchanged).

    A version already in ``to_state`` is left as it is, except that PUBLISHED listed among
    ``from_states`` publishes a published version again (a rollback makes it the latest).
    """
    publish_again = (
        cmd.to_state is DefinitionState.PUBLISHED and DefinitionState.PUBLISHED in cmd.from_states
    )
    if current is cmd.to_state and not publish_again:
        return False
    if current not in cmd.from_states:
        allowed = ", ".join(s.value for s in cmd.from_states) or "none"
        raise FailedPrecondition(
            f"definition {cmd.name!r} version {cmd.version} is {current.value}; moving it to "
            f"{cmd.to_state.value} is allowed only from: {allowed}",
            reason="TRANSITION_NOT_ALLOWED",
            metadata={
                "namespace": cmd.namespace,
                "name": cmd.name,
                "version": str(cmd.version),
                "current_state": current.value,
                "to_state": cmd.to_state.value,
            },
        )
    return True


def not_found(namespace: str, name: str, version: int) -> NotFound:
    what = "has no published version" if version == 0 else f"has no version {version}"
    return NotFound(
        f"definition {name!r} in namespace {namespace!r} {what}",
        reason="DEFINITION_NOT_FOUND",
        metadata={"namespace": namespace, "name": name, "version": str(version)},
    )


# -- listing -------------------------------------------------------------------------------------


def check_page(page: Page) -> None:
    if not 1 <= page.size <= MAX_PAGE_SIZE:
        raise InvalidArgument.field("page_size", f"must be 1..{MAX_PAGE_SIZE}")


def encode_version_token(version: int) -> str:
    """Every version of one definition, newest first: the next page is below ``version``."""
    return _b64(f"d1.v.{version}")


def encode_name_token(name: str) -> str:
    """The latest version of every definition, by name: the next page is after ``name``."""
    return _b64(f"d1.n.{name}")


def decode_version_token(token: str) -> int | None:
    found = _decode(token)
    if found is None:
        return None
    if not isinstance(found, int):
        raise _bad_token()
    return found


def decode_name_token(token: str) -> str | None:
    found = _decode(token)
    if found is None:
        return None
    if not isinstance(found, str):
        raise _bad_token()
    return found


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def _decode(token: str) -> int | str | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (ValueError, binascii.Error, UnicodeError):
        raise _bad_token() from None
    m = _TOKEN.match(text)
    if m is None:
        raise _bad_token()
    return int(m[2]) if m[1] else m[4]


def _bad_token() -> InvalidArgument:
    return InvalidArgument.field(
        "page_token", "is not a token returned by a previous ListStoredDefinitionVersions call"
    )
