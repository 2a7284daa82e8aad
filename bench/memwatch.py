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


def _private_kib(pid: int) -> int:
    """Pages the process does not share (a fork's copy-on-write pages it has written)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


@dataclass
class MemoryPeaks:
    """Sample repeatedly while the process runs; VmHWM only grows, so the last sample counts."""

    main_kib: int = 0
    main_private_kib: int = 0  # the most of the process's own pages seen (sampled)
    child_kib: int = 0  # the largest child (the forked result scan); shares pages with main
    child_private_kib: int = 0  # ... and the most of it that was its own
    samples: int = 0

    def sample(self, pid: int) -> None:
        self.main_kib = max(self.main_kib, _hwm_kib(pid))
        self.samples += 1
        walk = self.samples % 10 == 1  # smaps_rollup walks the mappings: now and then
        if walk:
            self.main_private_kib = max(self.main_private_kib, _private_kib(pid))
        for child in _children(pid):
            self.child_kib = max(self.child_kib, _hwm_kib(child))
            if walk:
                self.child_private_kib = max(self.child_private_kib, _private_kib(child))

    @property
    def main_mib(self) -> float:
        return self.main_kib / 1024

    @property
    def main_private_mib(self) -> float:
        return self.main_private_kib / 1024

    @property
    def child_mib(self) -> float:
        return self.child_kib / 1024

    @property
    def child_private_mib(self) -> float:
        return self.child_private_kib / 1024
