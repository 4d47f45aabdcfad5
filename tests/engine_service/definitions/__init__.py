"""Tests of engine_service.definitions."""
