"""Our own exceptions: adapters translate driver errors into these at the boundary."""

import os
import tempfile


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


class ScratchUnavailable(UnavailableError):
    """The local temporary directory, where a big scan spills its findings and task-id hashes,
    could not be written or read (full, missing, not writable): the scan cannot go on."""

    @classmethod
    def from_error(cls, exc: BaseException) -> "ScratchUnavailable":
        try:
            where = tempfile.gettempdir()  # TMPDIR, else /tmp: SQLite's first choices too
        except OSError:  # it tries a file in each candidate: none took one
            where = os.environ.get("TMPDIR") or "/tmp"
        return cls(
            f"cannot use the temporary directory {where} for the scan's spill files: {exc}. "
            "Free space there, or point TMPDIR at a larger directory."
        )


class LockHeld(MaintenanceError):
    """Another maintenance run holds the run lock."""


class PlanRefused(MaintenanceError):
    """A safety rule (circuit breaker) refused to act on the plan."""
