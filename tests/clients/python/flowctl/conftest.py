from tests.clients.python.flowctl.live import live_engine, ns

__all__ = ["live_engine", "ns"]
