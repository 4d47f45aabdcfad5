"""Tests of engine_service.run: the in-process Engine over both store backends."""
