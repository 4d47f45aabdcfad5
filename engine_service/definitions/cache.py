"""Which definition version a StartFlow starts, remembered for a short while.

Two things are remembered, for two reasons:

* **Content**, by (namespace, name, version) and definition_hash: a stored version's document
  never changes (the store has no update), so its parsed, hash-checked :class:`FlowDefinition`
  is kept for good (bounded, least recently used first out).
* **Resolution**: which version a request means and that it is PUBLISHED. That does change —
  archive withdraws a version, rollback makes another one the latest published (version 0) —
  so it is kept only ``ttl`` seconds, and forgotten at once when a transition goes through this
  replica. Why that is safe: a start that overlaps a transition made on *another* replica may
  use the state from up to ``ttl`` before it, i.e. it behaves as if it had arrived that much
  earlier, before the transition — an order two concurrent requests could have had anyway. What
  is started is still a version that was published (never a draft), and FlowInitialized records
  exactly which one. A caller that needs a transition seen at once by every replica waits
  ``ttl`` after it, or starts an explicit version number.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from engine_service.definitions.definition import FlowDefinition
from engine_service.definitions.stored import startable
from flowledger_core.domain import DefinitionState, StoredDefinition

DEFAULT_TTL_S = 1.0
MAX_CONTENT = 1024

_Key = tuple[str, str, int]


class DefinitionCache:
    def __init__(self, ttl: float = DEFAULT_TTL_S, max_content: int = MAX_CONTENT) -> None:
        self._ttl = ttl
        self._max = max_content
        self._resolved: dict[_Key, tuple[float, StoredDefinition]] = {}
        self._content: OrderedDict[tuple[str, str, int, str], FlowDefinition] = OrderedDict()
        # Bumped by forget: a fetch that began before a transition must not cache its answer.
        self._epoch = 0

    async def startable(
        self,
        namespace: str,
        name: str,
        version: int,
        fetch: Callable[[], Awaitable[StoredDefinition]],
    ) -> tuple[StoredDefinition, FlowDefinition]:
        """The startable version ``version`` (0 = latest published) means and its definition;
        ``fetch`` asks the store when the resolution is not fresh. Errors are not cached."""
        key = (namespace, name, version)
        now = time.monotonic()
        epoch = self._epoch
        hit = self._resolved.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], self._definition(hit[1])
        self._resolved.pop(key, None)
        stored = await fetch()
        definition = self._definition(stored)  # FailedPrecondition unless PUBLISHED
        # Kept from when the fetch was sent (it errs early), never extended by hits.
        fresh = epoch == self._epoch
        if self._ttl > 0 and fresh and stored.state is DefinitionState.PUBLISHED:
            self._resolved[key] = (now + self._ttl, stored)
        return stored, definition

    def forget(self, namespace: str, name: str) -> None:
        """A version of (namespace, name) changes state here: resolve it again next time."""
        self._epoch += 1
        for key in [k for k in self._resolved if k[:2] == (namespace, name)]:
            del self._resolved[key]

    def _definition(self, stored: StoredDefinition) -> FlowDefinition:
        if stored.state is not DefinitionState.PUBLISHED:
            return startable(stored)  # raises the precise FailedPrecondition
        key = (stored.namespace, stored.name, stored.version, stored.definition_hash)
        definition = self._content.get(key)
        if definition is None:
            definition = startable(stored)
            self._content[key] = definition
            if len(self._content) > self._max:
                self._content.popitem(last=False)
        else:
            self._content.move_to_end(key)
        return definition
