"""The `task-cleanup` command line: a thin caller of the services."""
