"""Scripts: the seed's entry points (`python scripts/task_cleanup.py ...`) and the demo (`python -m scripts.demo`)."""
