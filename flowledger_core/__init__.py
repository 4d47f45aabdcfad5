"""flowledger_core."""
