"""Planning the writes of one step: from a decision to the append that records it.

The planner (:mod:`.planner`) and what the step kinds planned outside it need of it
(:mod:`.step_planner`): durable waits (:mod:`.waits`), ``when`` conditions (:mod:`.when`),
compensations (:mod:`.compensation`), errors no attempt gets past (:mod:`.permanent`), the
StepStarted of an attempt (:mod:`.step_start`), binding recorded step types
(:mod:`.step_binding`), the flow's artifacts (:mod:`.artifacts`), a guard on progress
(:mod:`.progress`).
"""
