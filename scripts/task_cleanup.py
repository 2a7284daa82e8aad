#!/usr/bin/env python3
"""The seed's `python scripts/task_cleanup.py check|cleanup|...`: same as `task-cleanup`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maintenance.cli.main import main  # after the path set-up above

if __name__ == "__main__":
    sys.exit(main())
