"""Flow definitions: what a flow is before it runs.

The definition itself and its document schema (:mod:`.definition`, :mod:`.schema`), ``when``
conditions (:mod:`.conditions`), the Python builder (:mod:`.builder`), the sample flows
(:mod:`.samples`), and versions kept in the store (:mod:`.stored`, :mod:`.cache`). Above
:mod:`engine_service.steps` (a definition names step types), below everything that runs.
"""
