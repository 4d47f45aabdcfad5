"""Tests of engine_service.core: events, replay, fingerprints, folding."""
