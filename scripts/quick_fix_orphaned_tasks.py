#!/usr/bin/env python3
"""The seed's quick fix: clean every confirmed orphan now (`task-cleanup quick-fix`).

Extra arguments are passed on, e.g. `--dry-run`, `--grace 0`, `--config PATH`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maintenance.cli.main import main  # after the path set-up above


def _argv(args: list[str]) -> list[str]:
    """Global options (--config, --log-level) go before the subcommand."""
    head: list[str] = []
    rest = list(args)
    for option in ("--config", "--log-level"):
        if option in rest:
            i = rest.index(option)
            head += rest[i : i + 2]
            del rest[i : i + 2]
    return [*head, "quick-fix", *rest]


if __name__ == "__main__":
    sys.exit(main(_argv(sys.argv[1:])))
