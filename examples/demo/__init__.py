"""A small demo app shaped like the seed's: a `tasks` table, `sub_tasks`, and Celery tasks on Redis.

Used by `make demo`, the compose `demo` profile, the tests and the benchmark. Not part of the
maintenance service itself.
"""
