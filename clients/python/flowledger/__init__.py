"""flowledger: the Python SDK of the flowledger workflow engine.

``flowledger.v1`` holds the generated protobuf/gRPC stubs (never edited by hand); everything else
in this package is hand-written and keeps generated types out of user code.
"""

__version__ = "0.1.0"
