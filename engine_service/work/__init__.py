"""The work loop of one engine replica: claim flows with leases, run them, renew the leases.

:mod:`.loop` (the :class:`~engine_service.work.loop.WorkLoop`; not to be confused with the SDK's
task workers or the WorkerService of :mod:`engine_service.api.worker_servicer`), and the
in-process fan-out of what this replica appends to local watchers (:mod:`.notifier`, with the
logs it keeps in :mod:`.local_logs`).
"""
