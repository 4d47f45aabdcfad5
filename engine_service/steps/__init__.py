"""What a step is and the step types the engine carries.

A step function, its context and result (:mod:`.context`), the registry of named step types
(:mod:`.registry`), running one attempt (:mod:`.executor`), retry and timeout policy
(:mod:`.retry`), the built-in ``wait``/``signal``/``task`` (:mod:`.builtin`), the HTTP runners
(:mod:`.runners`, :mod:`.http`, :mod:`.webhook`, over :mod:`.transport` and :mod:`.egress`), and
the plugins a replica loads (:mod:`.plugins`). The lowest layer of the engine: it knows no flow.
"""
