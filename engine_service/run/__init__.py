"""Running flows over any store port: the in-process engine and a handle per flow.

:class:`~engine_service.run.engine.Engine` (:mod:`.engine`) makes
:class:`~engine_service.run.flow_run.FlowRun` handles (:mod:`.flow_run`, reading in
:mod:`.flow_log`), which need only :mod:`.flow_host` of it. Branching (:mod:`.branching`),
verify (:mod:`.verify`), signals and cancels (:mod:`.interventions`), task steps leased to
workers (:mod:`.tasks`), fencing (:mod:`.lease`), snapshots (:mod:`.snapshots`), lifecycle
hooks (:mod:`.hooks`) and a blocking facade (:mod:`.sync`).
"""
