"""Benchmark of `task-cleanup check` against the naive approach (see bench_check.py)."""
