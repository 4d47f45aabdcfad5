"""Tests of flowledger_core."""
