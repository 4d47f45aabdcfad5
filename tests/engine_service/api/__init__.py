"""The engine service over real gRPC on loopback (EngineService, WorkerService), with a live
store."""
