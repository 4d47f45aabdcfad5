"""Tests of engine_service.store_client: the store port over gRPC, its faults and retries."""
