"""Tests of engine_service.steps: the registry, retries, timeouts, the HTTP runners and egress."""
