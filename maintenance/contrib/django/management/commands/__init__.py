"""`manage.py task_cleanup`."""
