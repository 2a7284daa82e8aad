"""Process exit codes, named in one place so the CLI and the docs agree."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # consistent: nothing found, or the requested action completed
    FINDINGS = 1  # inconsistencies found (check), or an action was refused by a safety rule
    USAGE = 2  # bad command line or bad configuration: nothing was read or changed
    UNAVAILABLE = 3  # Redis or the database failed: no verdict, nothing further changed
    LOCKED = 4  # another maintenance run holds the lock
    INTERNAL = 70  # a bug of ours (EX_SOFTWARE): never confused with "inconsistencies found"
