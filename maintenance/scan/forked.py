"""Run one function in a forked child process: how the scan uses the machine's second core.

The scan's Python work shares one core, however many threads it has (the GIL). The result-key
scan needs nothing from the rest of the scan, so it can run in a fork, where its parsing and
Redis round trips no longer compete with the queue scan for that core.

The child writes only to its pipe and leaves with `os._exit`: no atexit handlers, no flushing or
closing of anything it inherited. Clients it uses must be fork-aware (redis-py's pools reconnect
in a new process). Where `os.fork` does not exist, the caller runs the function on a thread.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
Report = Callable[[Any], None]  # sends a value from the child to the parent as it goes
_HEADER = struct.Struct("!cQ")  # frame kind, payload length
PROGRESS, RESULT, ERROR = b"p", b"r", b"e"

CAN_FORK = hasattr(os, "fork")
# A thread whose name ends so declares it touches nothing the child uses (the run lock's lease
# renewer: its own Redis pool, which redis-py re-creates in a new process, and no logging
# unless it fails); the forked child logs nothing.
FORK_SAFE_SUFFIX = "(fork-safe)"


def only_fork_safe_threads() -> bool:
    """True when every thread but the main one has declared itself fork-safe."""
    main = threading.main_thread()
    return all(t is main or t.name.endswith(FORK_SAFE_SUFFIX) for t in threading.enumerate())


class ForkedCall(Generic[T]):
    """`fn(report)` running in a child from construction on; `result` waits for it."""

    def __init__(self, fn: Callable[[Report], T]):
        read_fd, write_fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            os.close(read_fd)
            _child(fn, write_fd)
        os.close(write_fd)
        self._pipe = os.fdopen(read_fd, "rb")

    def result(self, progress: Report) -> T:
        """Block (releasing the GIL) until the child answers, passing what it reports on to
        `progress`; re-raise what it raised."""
        try:
            while True:
                header = self._pipe.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    raise RuntimeError("the forked scan ended without an answer")
                kind, size = _HEADER.unpack(header)
                payload: Any = pickle.loads(self._pipe.read(size))
                if kind == PROGRESS:
                    progress(payload)
                elif kind == RESULT:
                    return cast("T", payload)
                else:
                    raise payload
        finally:
            self._pipe.close()
            os.waitpid(self.pid, 0)

    def cancel(self) -> None:
        """Stop the child (the scan failed elsewhere); `result` then raises."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)


def _child(fn: Callable[[Report], T], write_fd: int) -> None:
    code = 0
    try:
        with os.fdopen(write_fd, "wb") as pipe:

            def send(kind: bytes, value: Any) -> None:
                data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                pipe.write(_HEADER.pack(kind, len(data)) + data)
                pipe.flush()

            try:
                send(RESULT, fn(lambda value: send(PROGRESS, value)))
            except BaseException as exc:  # every failure goes to the parent
                send(ERROR, _portable(exc))
    except BaseException:  # the parent is gone: nothing left to tell
        code = 1
    finally:
        os._exit(code)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
