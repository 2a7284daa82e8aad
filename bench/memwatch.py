"""Peak memory of a process and of the children it forks, polled from /proc.

wait4's ru_maxrss does not do here: on exec the kernel keeps the high-water mark of the memory
image being replaced, that is of this benchmark process that spawned the check (hundreds of MB
after parsing a report or holding the naive checker's lists). VmHWM belongs to the new image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


@dataclass
class MemoryPeaks:
    """Sample repeatedly while the process runs; VmHWM only grows, so the last sample counts."""

    main_kib: int = 0
    child_kib: int = 0  # the largest child (the forked result scan); shares pages with main

    def sample(self, pid: int) -> None:
        self.main_kib = max(self.main_kib, _hwm_kib(pid))
        for child in _children(pid):
            self.child_kib = max(self.child_kib, _hwm_kib(child))

    @property
    def main_mib(self) -> float:
        return self.main_kib / 1024

    @property
    def child_mib(self) -> float:
        return self.child_kib / 1024
