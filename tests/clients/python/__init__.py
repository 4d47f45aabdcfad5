"""Tests of the Python SDK distribution and of flowctl."""
