"""In-process lifecycle hooks (seed flux): step start / complete / error, flow complete / error.

Register callables on a :class:`Hooks` and hand it to the engine (``Engine(..., hooks=hooks)``,
for an embedded engine; the engine service has none yet). A hook is called once
per event, in the process whose append recorded it, after the store applied it — so a hook
never sees an event that was not recorded, and a replay or a takeover never calls it again for
old events. Hooks observe; they cannot change the flow. A hook that raises (or an async hook
that fails) is logged and ignored. Remote observers use the WatchFlow stream instead.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from engine_service.core.events import (
    EngineEvent,
    FlowCompleted,
    FlowFailed,
    StepFailed,
    StepFinished,
    StepStarted,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HookEvent:
    """What a hook receives: the flow, the recorded event and its version in the log."""

    namespace: str
    flow_id: str
    version: int
    event: EngineEvent


Hook = Callable[[HookEvent], "Awaitable[None] | None"]


@dataclass
class Hooks:
    on_step_start: list[Hook] = field(default_factory=list)
    on_step_complete: list[Hook] = field(default_factory=list)
    on_step_error: list[Hook] = field(default_factory=list)
    on_flow_complete: list[Hook] = field(default_factory=list)
    on_flow_error: list[Hook] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (self.on_step_start, self.on_step_complete, self.on_step_error,
             self.on_flow_complete, self.on_flow_error)
        )  # fmt: skip

    def for_event(self, event: EngineEvent) -> list[Hook]:
        match event:
            case StepStarted():
                return self.on_step_start
            case StepFinished():
                return self.on_step_complete
            case StepFailed():
                return self.on_step_error
            case FlowCompleted():
                return self.on_flow_complete
            case FlowFailed():
                return self.on_flow_error
        return []

    async def dispatch(
        self, namespace: str, flow_id: str, versioned: list[tuple[int, EngineEvent]]
    ) -> None:
        """Call the hooks of each event, in log order."""
        for version, event in versioned:
            for hook in self.for_event(event):
                try:
                    result = hook(HookEvent(namespace, flow_id, version, event))
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception(
                        "lifecycle hook %r failed on %s of flow %s (ignored)",
                        hook, type(event).__name__, flow_id,
                    )  # fmt: skip
