"""The store port over gRPC: how the engine talks to the store service.

:class:`~engine_service.store_client.client.GrpcEventStore` (:mod:`.client`, its definition and
lease calls in :mod:`.work_calls`) implements :class:`flowledger_core.ports.EventStore`; appends
share one AppendStream (:mod:`.append_stream`) over one channel (:mod:`.channel`), with the
retry budget of :mod:`.retry`; :mod:`.probe` follows the store's health, :mod:`.limits` learns
its request limits (GetLimits). Converts with :mod:`flowledger_core.wire`. Only
:mod:`engine_service.server` builds it.
"""
