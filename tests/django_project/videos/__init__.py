"""The test project's app: video tasks (rows) and their segments (sub-task rows)."""
