"""`task-cleanup monitor`: a cheap live view of Celery's Redis state, metrics for Prometheus."""
