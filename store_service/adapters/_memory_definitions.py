"""The in-memory store's versioned definitions, laid out like the tables (definitions, their
versions, each version's history). Called under the store's lock; the rules are the ones the
Postgres backend applies (:mod:`.definition_rules`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from flowledger.errors import InvalidArgument
from flowledger_core.domain import (
    DefinitionPage,
    DefinitionState,
    DefinitionTransition,
    DefinitionTransitionCommand,
    NewDefinitionVersion,
    Page,
    StoredDefinition,
)
from store_service.adapters import definition_rules as rules


@dataclass
class _Version:
    stored: StoredDefinition
    request_id: str | None


class DefinitionBook:
    """Every definition of every namespace: (namespace, name) -> versions 1..n in order.

    No method awaits, so each is atomic on the event loop without the store's lock.
    """

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], list[_Version]] = {}
        self._last_now = datetime.min.replace(tzinfo=UTC)

    def _now(self) -> datetime:
        # Strictly increasing, as Postgres's now() is across transactions that follow each
        # other: "the latest published" must never tie.
        self._last_now = max(datetime.now(UTC), self._last_now + timedelta(microseconds=1))
        return self._last_now

    def put(self, new: NewDefinitionVersion) -> tuple[StoredDefinition, bool]:
        new = rules.checked_new_version(new)
        versions = self._versions.setdefault((new.namespace, new.name), [])
        if new.request_id is not None:
            for earlier in versions:
                if earlier.request_id == new.request_id:
                    return rules.same_request(earlier.stored, new), True
        if versions and rules.reuses(versions[-1].stored, new):
            return versions[-1].stored, True
        now = self._now()
        stored = StoredDefinition(
            namespace=new.namespace,
            name=new.name,
            version=len(versions) + 1,
            state=DefinitionState.DRAFT,
            definition_json=new.definition_json,
            definition_hash=new.definition_hash,
            change_note=new.change_note,
            created_by=new.created_by,
            created_at=now,
            published_at=None,
            history=(
                DefinitionTransition(DefinitionState.DRAFT, new.change_note, new.created_by, now),
            ),
            request_id=new.request_id,
        )
        versions.append(_Version(stored, new.request_id))
        return stored, False

    def get(self, namespace: str, name: str, version: int) -> StoredDefinition:
        rules.check_ref(namespace, name)
        if version < 0:
            raise InvalidArgument.field("version", "must be >= 0 (0: the latest published)")
        versions = [v.stored for v in self._versions.get((namespace, name), [])]
        if version == 0:
            published = [v for v in versions if v.state is DefinitionState.PUBLISHED]
            if published:
                return max(published, key=lambda v: (v.published_at, v.version))
        elif version <= len(versions):
            return versions[version - 1]
        raise rules.not_found(namespace, name, version)

    def list(self, namespace: str, name: str | None, page: Page) -> DefinitionPage:
        rules.check_page(page)
        if name is None:
            after_name = rules.decode_name_token(page.token)
            rows = sorted(
                (vs[-1].stored for (ns, n), vs in self._versions.items() if ns == namespace and vs),
                key=lambda v: v.name,
            )
            rows = [v for v in rows if after_name is None or v.name > after_name]
        else:
            rules.check_ref(namespace, name)
            after_version = rules.decode_version_token(page.token)
            rows = [v.stored for v in reversed(self._versions.get((namespace, name), []))]
            rows = [v for v in rows if after_version is None or v.version < after_version]
        if len(rows) <= page.size:
            return DefinitionPage(tuple(rows))
        last = rows[page.size - 1]
        token = (
            rules.encode_name_token(last.name)
            if name is None
            else rules.encode_version_token(last.version)
        )
        return DefinitionPage(tuple(rows[: page.size]), token)

    def transition(self, cmd: DefinitionTransitionCommand) -> StoredDefinition:
        rules.checked_transition(cmd)
        versions = self._versions.get((cmd.namespace, cmd.name), [])
        if cmd.version > len(versions):
            raise rules.not_found(cmd.namespace, cmd.name, cmd.version)
        entry = versions[cmd.version - 1]
        current = entry.stored
        if not rules.transition_applies(current.state, cmd):
            return current
        now = self._now()
        entry.stored = replace(
            current,
            state=cmd.to_state,
            published_at=now if cmd.to_state is DefinitionState.PUBLISHED else current.published_at,
            history=(
                *current.history,
                DefinitionTransition(cmd.to_state, cmd.change_note, cmd.actor, now),
            ),
        )
        return entry.stored
