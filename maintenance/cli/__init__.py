"""The `task-cleanup` command line: a thin caller of `maintenance.service.Maintenance`."""
