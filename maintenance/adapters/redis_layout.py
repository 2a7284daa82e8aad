"""Every Redis key name we touch, derived in one place from kombu's and Celery's own settings."""

from __future__ import annotations

from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BrokerLayout:
    """Key names of kombu's Redis transport: queue lists per priority band and the unacked store."""

    global_keyprefix: str = ""
    sep: str = "\x06\x16"
    priority_steps: tuple[int, ...] = (0, 3, 6, 9)
    unacked_key: str = "unacked"
    unacked_index_key: str = "unacked_index"
    unacked_mutex_key: str = "unacked_mutex"
    visibility_timeout_s: float = 3600.0

    @classmethod
    def from_channel(cls, channel: Any) -> BrokerLayout:
        """Read the resolved transport options off a kombu Redis channel (untyped in kombu)."""
        return cls(
            global_keyprefix=getattr(channel, "global_keyprefix", "") or "",
            sep=channel.sep,
            priority_steps=tuple(channel.priority_steps),
            unacked_key=channel.unacked_key,
            unacked_index_key=channel.unacked_index_key,
            unacked_mutex_key=channel.unacked_mutex_key,
            visibility_timeout_s=float(channel.visibility_timeout),
        )

    def band(self, priority: int) -> int:
        """kombu's mapping of a message priority to the step whose list holds it."""
        steps = self.priority_steps
        return steps[bisect(steps, priority) - 1] if steps else 0

    def queue_key(self, queue: str, band: int = 0) -> str:
        name = f"{queue}{self.sep}{band}" if band else queue
        return self.global_keyprefix + name

    def queue_keys(self, queue: str) -> list[tuple[int, str]]:
        """(band, key) for every priority list of a queue, the plain list first."""
        bands = sorted(set(self.priority_steps) | {0})
        return [(band, self.queue_key(queue, band)) for band in bands]

    @property
    def unacked(self) -> str:
        return self.global_keyprefix + self.unacked_key

    @property
    def unacked_index(self) -> str:
        return self.global_keyprefix + self.unacked_index_key

    @property
    def unacked_mutex(self) -> str:
        return self.global_keyprefix + self.unacked_mutex_key


@dataclass(frozen=True)
class ResultLayout:
    """Result backend keys: Celery's `task_keyprefix` already carries its global prefix."""

    task_keyprefix: str = "celery-task-meta-"

    def key_for(self, task_id: str) -> str:
        return f"{self.task_keyprefix}{task_id}"

    def task_id_of(self, key: str) -> str:
        return key[len(self.task_keyprefix) :]

    @property
    def match(self) -> str:
        return _glob_escape(self.task_keyprefix) + "*"


@dataclass(frozen=True)
class OwnKeys:
    """Keys of our own: quarantine, run lock, scan summaries, guard skip counts."""

    prefix: str = "task-maintenance"

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def lock(self) -> str:
        return self.key("lock")

    @property
    def quarantine(self) -> str:
        return self.key("quarantine")

    @property
    def quarantine_index(self) -> str:
        return self.key("quarantine", "index")

    @property
    def lock_holder(self) -> str:
        return self.key("lock", "holder")

    @property
    def guard_skips(self) -> str:
        return self.key("guard", "skips")


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def split_queue_key(key: str, layout: BrokerLayout, queues: Sequence[str]) -> tuple[str, int]:
    """Inverse of `queue_key` for the configured queues; unknown keys map to themselves."""
    for queue in queues:
        for band, candidate in layout.queue_keys(queue):
            if candidate == key:
                return queue, band
    return key, 0
