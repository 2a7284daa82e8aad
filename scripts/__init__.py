"""The seed's entry points (`python scripts/task_cleanup.py ...`) and `python -m scripts.demo`."""
