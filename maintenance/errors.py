"""Our own exceptions: adapters translate driver errors into these at the boundary."""


class MaintenanceError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(MaintenanceError):
    """The configuration is missing, malformed or does not match the database."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        self.key = key
        self.source = source
        where = []
        if key:
            where.append(f"key '{key}'")
        if source:
            where.append(f"in {source}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class UnavailableError(MaintenanceError):
    """A backing service failed; nothing read from it may be trusted."""


class BrokerUnavailable(UnavailableError):
    """Redis (broker or result backend) failed or timed out."""


class DatabaseUnavailable(UnavailableError):
    """The database failed or timed out."""


class LockHeld(MaintenanceError):
    """Another maintenance run holds the run lock."""


class PlanRefused(MaintenanceError):
    """A safety rule (circuit breaker) refused to act on the plan."""
