"""The in-process engine: runs flows over any :class:`flowledger_core.ports.EventStore`.

::

    engine = Engine(MemoryEventStore(), registry=sample_registry())
    run = await engine.start(chem_flow(), {"order": 1}, idempotency_key="order-1")
    await run.run_to_end()
    await run.event_variants()   # "ISFSFSFC"
    await run.flow_fingerprint()
    branch = await engine.branch("default", run.flow_id, "split", {})   # then branch.run_to_end()
    report = await engine.verify("default", run.flow_id)                # report.ok

A step's StepStarted is one append; its signals, StepFinished and output artifacts are another,
one transaction (with FlowCompleted and status ``completed`` after the last step, or, under
``run_to_end``, with the next step's StepStarted), or StepFailed and FlowFailed. Every append
carries the version last seen and a command id derived from (flow, generation, step, attempt,
kind): a conflict or a duplicate makes the run re-read the log and decide again
(:mod:`engine_service.core.decide`); it never re-appends blindly. Transient store errors are retried
by the store client (``engine_service.store_client.retry``), not here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from engine_service.core.events import FlowInitialized
from engine_service.core.ids import flow_id_for_key
from engine_service.core.writes import append_command, initial_write
from engine_service.definitions.definition import FlowDefinition
from engine_service.definitions.stored import startable
from engine_service.fingerprint import ENGINE_VERSION
from engine_service.planning.step_start import first_started
from engine_service.run.branching import branch_flow
from engine_service.run.flow_host import AppendObserver, EngineSettings
from engine_service.run.flow_log import LoggedEvent
from engine_service.run.flow_run import FlowRun
from engine_service.run.hooks import Hooks
from engine_service.run.lease import LeaseLost
from engine_service.run.verify import Divergence, VerifyReport, verify_flow
from engine_service.steps.executor import PreparedArtifact, prepare
from engine_service.steps.plugins import default_registry
from engine_service.steps.registry import StepRegistry
from flowledger.canonical import JsonValue
from flowledger.errors import AlreadyExists, InvalidArgument
from flowledger_core.domain import CreatedFlow, FlowStatus, NewArtifact, NewFlow, StoredDefinition
from flowledger_core.ports import EventStore

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"

__all__ = [
    "DEFAULT_NAMESPACE",
    "Divergence",
    "Engine",
    "FlowRun",
    "LeaseLost",
    "LoggedEvent",
    "VerifyReport",
]


class Engine:
    """Starts and attaches to flows. Holds no per-flow state: any number of engines, in any
    processes, may work on the same store (and even the same flow) at once."""

    def __init__(
        self,
        store: EventStore,
        *,
        registry: StepRegistry | None = None,
        settings: EngineSettings | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.store = store
        self.registry = registry if registry is not None else default_registry()
        self.settings = settings or EngineSettings()
        self.hooks = hooks if hooks is not None else Hooks()
        """In-process lifecycle hooks (:mod:`engine_service.run.hooks`)."""
        self.append_observer: AppendObserver | None = None
        """Called, without awaiting, with (namespace, flow id, the events as stored) after every
        append any of this engine's handles made and the store applied, in the order the
        answers arrive (the engine service feeds WatchFlow with it)."""

    async def start(
        self,
        definition: FlowDefinition,
        input: JsonValue = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        idempotency_key: str | None = None,
        variables: Mapping[str, JsonValue] | None = None,
        created_by: str = "",
        fencing_token: int = 0,
        lease: tuple[str, int] | None = None,
    ) -> FlowRun:
        """Create and initialize a flow (nothing runs yet: call ``next``/``run_to_end``).

        With an ``idempotency_key`` the flow id is a UUIDv5 of (namespace, key): starting again
        returns the same flow and starts nothing; the same key with another definition, input
        or variables is AlreadyExists. Everything is validated before anything is written.

        ``lease`` (owner, ms), for a caller about to run the flow: one store call creates the
        flow leased to it (``FlowRun.lease``; None when the flow existed) and appends
        FlowInitialized with the first step's StepStarted (as ``run_to_end`` chains a
        StepStarted to a StepFinished), in one transaction; without it, creating,
        initializing, claiming and starting the first step take four.
        """
        definition.resolve(self.registry)  # unknown types, kinds, configs: InvalidArgument
        input_artifact = _prepare_field(input, "input")
        variables_artifact = None
        if variables:
            if not isinstance(variables, Mapping):
                raise InvalidArgument.field("variables", "must be a JSON object")
            variables_artifact = _prepare_field(dict(variables), "variables")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 256:
            raise InvalidArgument.field("idempotency_key", "must be 1..256 characters")

        flow_id = (
            flow_id_for_key(namespace, idempotency_key)
            if idempotency_key is not None
            else str(uuid.uuid4())
        )
        init = FlowInitialized(
            definition_name=definition.name,
            definition_version=definition.version,
            definition_hash=definition.definition_hash,
            steps=definition.steps,
            input_hash=input_artifact.hash,
            variables_hash=variables_artifact.hash if variables_artifact else None,
            engine_version=ENGINE_VERSION,
        )
        artifacts = [NewArtifact(input_artifact.hash, "flow_input", input_artifact.payload_json)]
        if variables_artifact is not None:
            artifacts.append(
                NewArtifact(
                    variables_artifact.hash, "flow_variables", variables_artifact.payload_json
                )
            )
        new = NewFlow(
            namespace=namespace,
            name=definition.name,
            flow_id=flow_id,
            created_by=created_by,
            status=FlowStatus.QUEUED,
        )
        created: CreatedFlow | None = None
        if lease is None:
            flow, existed = await self.store.create_flow(new)
        else:
            # One call and one commit: the flow, its lease and its first append.
            first = first_started(init, self.settings.clock)
            write = initial_write(flow_id, 0, init, tuple(artifacts), first)
            cmd = append_command(namespace, flow_id, 0, write, 0)
            created = await self.store.create_flow_with(new, lease=lease, initial=cmd)
            flow, existed = created.flow, created.existed
            if created.lease is not None:
                fencing_token = created.lease.fencing_token
        run = FlowRun(self, flow, definition, fencing_token=fencing_token, fresh=not existed)
        run.existed = existed
        run.remember(input_artifact.hash, input_artifact.payload)
        if variables_artifact is not None:
            run.remember(variables_artifact.hash, variables_artifact.payload)
        if created is not None and created.initial is not None:
            run.lease = created.lease
            await run.created(write, cmd, created.initial)
            recorded = init
        else:
            recorded = await run.initialize(init, tuple(artifacts))
        if not _same_request(recorded, init):
            raise _key_reused(idempotency_key, flow.flow_id)
        if existed:
            log.info("flow %s already existed for its idempotency key", flow.flow_id)
        return run

    async def start_stored(
        self,
        stored: StoredDefinition,
        input: JsonValue = None,
        *,
        idempotency_key: str | None = None,
        variables: Mapping[str, JsonValue] | None = None,
        started_by: str = "",
    ) -> FlowRun:
        """``start`` a flow of a stored definition version (in its namespace), which must be
        PUBLISHED (FailedPrecondition reason DEFINITION_NOT_PUBLISHED / DEFINITION_ARCHIVED).
        FlowInitialized records its name, version and definition_hash; ``started_by`` becomes
        the flow's ``created_by``. Its step types must be in this engine's registry."""
        return await self.start(
            startable(stored),
            input,
            namespace=stored.namespace,
            idempotency_key=idempotency_key,
            variables=variables,
            created_by=started_by,
        )

    async def branch(
        self,
        namespace: str,
        flow_id: str,
        at_step: str,
        params_overrides: Mapping[str, Mapping[str, JsonValue]] | None = None,
        *,
        idempotency_key: str | None = None,
        started_by: str = "",
        definition: FlowDefinition | None = None,
    ) -> FlowRun:
        """Branch a completed or failed flow before ``at_step`` (nothing runs yet: call
        ``run_to_end``). The branch reuses the parent's log up to the end of the previous step
        (the store's copy-on-write branch), records its params in a PropertyPreferenceAssigned
        event, then runs ``at_step`` and the rest; its fingerprints equal a fresh run's with the
        same input and params.

        ``params_overrides`` maps step ids of ``at_step`` or later to whole new params objects,
        validated against the step types' schemas (a branch of a branch keeps its parent's
        overrides unless replaced). Errors, all before anything is written: unknown flow →
        NotFound; a flow not ended → FailedPrecondition FLOW_NOT_ENDED; unknown ``at_step`` →
        InvalidArgument field ``at_step``; a step the parent never finished before ``at_step``
        → FailedPrecondition STEP_NOT_REACHED; a bad override → InvalidArgument field
        ``params_overrides.<step_id>[...]``. With an ``idempotency_key`` the branch id is a
        UUIDv5 of (namespace, key): branching again returns the same branch (``existed``) and
        the same key for another branch is AlreadyExists IDEMPOTENCY_KEY_REUSED.
        ``definition`` is needed only when the parent ran step functions bound to its
        definition (the builder's plain functions) rather than registered types.
        """
        return await branch_flow(
            self,
            namespace,
            flow_id,
            at_step,
            params_overrides or {},
            idempotency_key=idempotency_key,
            started_by=started_by,
            definition=definition,
        )

    async def verify(self, namespace: str, flow_id: str) -> VerifyReport:
        """Replay the flow's whole log, re-hash every artifact it references and recompute
        every fingerprint; the report names the first divergence (see
        :mod:`engine_service.run.verify`). Read-only. NotFound for an unknown flow."""
        return await verify_flow(
            self.store, namespace, flow_id, chunk_size=self.settings.read_chunk_size
        )

    async def run(
        self,
        definition: FlowDefinition,
        input: JsonValue = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        idempotency_key: str | None = None,
        variables: Mapping[str, JsonValue] | None = None,
    ) -> FlowRun:
        """``start`` then ``run_to_end``; returns the finished run."""
        run = await self.start(
            definition,
            input,
            namespace=namespace,
            idempotency_key=idempotency_key,
            variables=variables,
        )
        await run.run_to_end()
        return run

    async def attach(
        self,
        flow_id: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        definition: FlowDefinition | None = None,
        fencing_token: int = 0,
    ) -> FlowRun:
        """A handle on an existing flow (to read it, or to continue it after a crash).

        Without ``definition`` the steps are rebuilt from FlowInitialized and resolved in the
        engine's registry; a definition given must be the one the flow started with.
        NotFound when the flow does not exist.
        """
        flow = await self.store.get_flow(namespace, flow_id)
        run = FlowRun(self, flow, definition, fencing_token=fencing_token, fresh=False)
        await run.state()
        return run


def _prepare_field(value: JsonValue, field: str) -> PreparedArtifact:
    try:
        return prepare(value)
    except ValueError as exc:
        raise InvalidArgument.field(field, str(exc)) from exc


def _same_request(recorded: FlowInitialized, wanted: FlowInitialized) -> bool:
    return (
        recorded.definition_hash == wanted.definition_hash
        and recorded.steps == wanted.steps
        and recorded.input_hash == wanted.input_hash
        and recorded.variables_hash == wanted.variables_hash
        and recorded.definition_version == wanted.definition_version
    )


def _key_reused(key: str | None, flow_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"idempotency key {key!r} already started flow {flow_id} with another definition, "
        "input or variables",
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata={"flow_id": flow_id},
    )
