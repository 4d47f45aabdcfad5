"""The deterministic heart of the engine: events, their fold into state, and what to do next.

Typed events and their JSON (:mod:`.events`, :mod:`.event_codec`), replay as a pure fold
(:mod:`.replay`, snapshots in :mod:`.state_json`), the decision from state alone
(:mod:`.decide`) and what it turns into (:mod:`.writes`), what a step receives
(:mod:`.step_inputs`), deterministic ids (:mod:`.ids`). No I/O, no clock, no randomness here.
"""
