"""Reading a flow's log: the typed events, their compact variants, outputs (the read side of
:class:`~engine_service.run.flow_run.FlowRun`, which inherits it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from engine_service.core.event_codec import decode
from engine_service.core.events import EngineEvent, variant
from engine_service.core.replay import FlowState, StepStatus
from engine_service.planning.artifacts import ArtifactCache
from flowledger.canonical import JsonValue
from flowledger.errors import InvalidArgument
from flowledger_core.domain import Append, StoredEvent
from flowledger_core.ports import EventStore


@dataclass(frozen=True)
class LoggedEvent:
    """An event of the flow's log, typed, with what the store recorded about it."""

    version: int
    event: EngineEvent
    stored: StoredEvent

    @property
    def variant(self) -> str:
        return variant(self.event)


class FlowLog:
    """Read-only views of one flow's log. Subclasses provide the store, ids, artifact cache,
    chunk size and ``state()``."""

    namespace: str
    flow_id: str
    _store: EventStore
    _artifacts: ArtifactCache
    _chunk_size: int

    async def state(self) -> FlowState:
        raise NotImplementedError

    async def events(self) -> list[LoggedEvent]:
        out: list[LoggedEvent] = []
        async for chunk in self._store.read_events(
            self.namespace, self.flow_id, chunk_size=self._chunk_size
        ):
            out.extend(LoggedEvent(e.version, decode(e.type, e.payload_json), e) for e in chunk)
        return out

    async def event_variants(self) -> str:
        """The compact form of the log, e.g. ``ISFSFSFC``."""
        return "".join(e.variant for e in await self.events())

    async def flow_fingerprint(self) -> str | None:
        """The fingerprint FlowCompleted recorded, or None while the flow has not completed."""
        return (await self.state()).flow_fingerprint

    async def last_step_output(self, step_id: str) -> list[JsonValue] | None:
        """The output payloads of ``step_id``'s StepFinished, or None if it has not finished."""
        state = await self.state()
        step = state.step(step_id)
        if step is None:
            raise InvalidArgument.field("step_id", f"flow {self.flow_id} has no step {step_id!r}")
        if step.status is not StepStatus.FINISHED_OK:
            return None
        return [a.payload for a in await self._artifacts.values(step.output_hashes)]

    async def _event_at(self, version: int) -> EngineEvent | None:
        found: list[StoredEvent] = []
        async for chunk in self._store.read_events(
            self.namespace, self.flow_id, after_version=version - 1, to_version=version
        ):
            found.extend(chunk)
        return decode(found[0].type, found[0].payload_json) if found else None


def stored_events(cmd: Append, seqs: tuple[int, ...], versions: range) -> tuple[StoredEvent, ...]:
    """The events of an applied append as the log holds them; ``ts`` is this process's clock
    (the append's answer does not carry the commit time)."""
    now = datetime.now(UTC)
    return tuple(
        StoredEvent(seq, cmd.flow_id, version, event.type, event.payload_json, now,
                    cmd.command_id)
        for seq, version, event in zip(seqs, versions, cmd.events, strict=True)
    )
