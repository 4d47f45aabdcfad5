"""The engine's gRPC API: EngineService and WorkerService.

Each RPC: validate (:mod:`.validation`) → convert (:mod:`.convert`, the one place protobuf meets
the engine's values) → the API layer (:mod:`.flows`, :mod:`.definitions`, :mod:`.watch`,
:mod:`.step_views`) → convert back. The servicers are :mod:`.engine_servicer` and
:mod:`.worker_servicer`.
"""
