"""The live view: `task-cleanup monitor` on a terminal."""
