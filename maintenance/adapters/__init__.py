"""Thin adapters around Redis, the database and Celery; they translate driver errors."""
