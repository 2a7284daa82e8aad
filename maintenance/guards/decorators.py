"""`@validate_task_exists` / `@validate_sub_task_exists`: skip a Celery task whose row is gone.

    @app.task(bind=True)
    @validate_task_exists                       # id from [[bindings]], or id_arg="task_id"
    def process_video(self, task_id): ...

A finished row ends the task as REVOKED (never FAILURE) through `Ignore`; a missing row is
re-checked with countdown retries first (the producer may not have committed yet); an unreachable
database is retried with backoff and never skipped. Settings: see `maintenance.guards.runtime`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn, TypeVar, overload

import structlog
from celery import Task
from celery._state import get_current_task
from celery.exceptions import Ignore, Retry

from maintenance.core.models import Reason, RowKind
from maintenance.errors import ConfigError, DatabaseUnavailable
from maintenance.guards.policy import (
    ATTEMPTS_HEADER,
    Action,
    Attempts,
    judge,
    judge_unavailable,
)
from maintenance.guards.runtime import (
    GuardRuntime,
    GuardSkip,
    guard_runtime,
    record_recheck,
    record_skip,
)

__all__ = ["validate_sub_task_exists", "validate_task_exists"]

F = TypeVar("F", bound=Callable[..., Any])
SKIP_EVENT = "task-guard-skipped"  # Celery event type sent on every skip

log = structlog.get_logger(__name__)
_std_log = logging.getLogger(__name__)  # only to ask cheaply whether debug is on


@overload
def validate_task_exists(fn: F, /) -> F: ...
@overload
def validate_task_exists(*, id_arg: str | None = None) -> Callable[[F], F]: ...
def validate_task_exists(fn: F | None = None, /, *, id_arg: str | None = None) -> Any:
    """Run the task only while its `tasks` row exists and is still to run."""
    return _decorator("task", fn, id_arg)


@overload
def validate_sub_task_exists(fn: F, /) -> F: ...
@overload
def validate_sub_task_exists(*, id_arg: str | None = None) -> Callable[[F], F]: ...
def validate_sub_task_exists(fn: F | None = None, /, *, id_arg: str | None = None) -> Any:
    """Run the task only while its `sub_tasks` row and that row's parent task are still to run."""
    return _decorator("sub_task", fn, id_arg)


def _decorator(kind: RowKind, fn: F | None, id_arg: str | None) -> Any:
    if fn is None:
        return lambda f: _wrap(kind, f, id_arg)
    return _wrap(kind, fn, id_arg)


@dataclass(frozen=True, slots=True)
class _ArgLocator:
    """Where a named parameter sits in a call, resolved once from the function's signature."""

    name: str
    index: int | None  # position among the positional parameters (self included), if any
    default: Any

    @classmethod
    def for_function(cls, fn: Callable[..., Any], name: str) -> _ArgLocator:
        params = inspect.signature(fn).parameters
        if name not in params:
            raise TypeError(f"{fn.__qualname__} has no parameter {name!r} (id_arg)")
        positional = [
            p.name
            for p in params.values()
            if p.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        index = positional.index(name) if name in positional else None
        default = params[name].default
        return cls(name, index, None if default is inspect.Parameter.empty else default)

    def find(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.name in kwargs:
            return kwargs[self.name]
        if self.index is not None and self.index < len(args):
            return args[self.index]
        return self.default


def _wrap(kind: RowKind, fn: F, id_arg: str | None) -> F:
    if isinstance(fn, Task):
        raise TypeError(
            "put @validate_task_exists / @validate_sub_task_exists below @app.task, "
            "directly above the function"
        )
    locator = None if id_arg is None else _ArgLocator.for_function(fn, id_arg)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        task, message_args = _owning_task(args)
        # Direct calls (`task(...)`, `task.run(...)`) are the caller's explicit choice: no guard.
        if task is not None and not task.request.called_directly:
            db_id = locator.find(args, kwargs) if locator else _bound_id(task, message_args, kwargs)
            _check(task, kind, db_id)
        return fn(*args, **kwargs)

    # Celery checks call arguments against the signature it reads *without* following
    # __wrapped__; this keeps `task.delay(wrong, args)` failing at the caller, as before.
    guarded.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]  # set on purpose
    return guarded  # type: ignore[return-value]  # it has F's signature, by construction


def _owning_task(args: tuple[Any, ...]) -> tuple[Task | None, tuple[Any, ...]]:
    """The running task: `self` for bound tasks, else the task on Celery's (thread-local) stack."""
    if args and isinstance(args[0], Task):
        return args[0], args[1:]
    task = get_current_task()
    return (task if isinstance(task, Task) else None), args


def _bound_id(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    binding = guard_runtime().binding(task.name)
    if binding is None:
        raise ConfigError(
            f"no [[bindings]] entry matches task {task.name!r}; add one or pass "
            "id_arg= to the guard decorator",
            key="bindings",
            source=guard_runtime().settings.source,
        )
    return binding.extract(task.request.id, args, kwargs)


def _check(task: Task, kind: RowKind, raw_id: Any) -> None:
    """Return to run the body; otherwise raise Ignore (skip) or Retry (re-check later)."""
    request = task.request
    if raw_id is None:
        log.warning(
            "guard found no row id in the message; running unguarded",
            task_id=request.id,
            task_name=task.name,
            kind=kind,
        )
        return
    db_id = str(raw_id)
    runtime = guard_runtime()
    attempts = _attempts(request)
    try:
        rows = runtime.fetch(kind, db_id)
    except DatabaseUnavailable as exc:
        _database_unavailable(task, runtime, attempts, kind, db_id, exc)
    verdict = judge(kind, rows, attempts, runtime.settings.guards)
    if verdict.action is Action.RUN:
        if _std_log.isEnabledFor(logging.DEBUG):
            log.debug("✅ row still to run", task_id=request.id, db_id=db_id, kind=kind)
        return
    assert verdict.reason is not None
    if verdict.action is Action.SKIP:
        _skip(task, kind, db_id, verdict.reason)
    record_recheck(verdict.reason.value)
    log.info(
        "row not found yet; re-checking",
        task_id=request.id,
        task_name=task.name,
        db_id=db_id,
        kind=kind,
        reason=verdict.reason.value,
        recheck=attempts.missing + 1,
        of=runtime.settings.guards.missing_retries,
        delay_s=verdict.delay_s,
    )
    _recheck(
        task,
        replace(attempts, missing=attempts.missing + 1),
        verdict.delay_s,
        f"{verdict.reason.value}: row {db_id}",
    )


def _attempts(request: Any) -> Attempts:
    """Our counter travels as a message header: top-level on a worker, in `headers` when eager."""
    value = getattr(request, ATTEMPTS_HEADER, None)
    if value is None and isinstance(request.headers, dict):
        value = request.headers.get(ATTEMPTS_HEADER)
    return Attempts.from_header(value)


def _database_unavailable(
    task: Task,
    runtime: GuardRuntime,
    attempts: Attempts,
    kind: RowKind,
    db_id: str,
    exc: DatabaseUnavailable,
) -> NoReturn:
    """Never skip on a failed read: back off and look again, or fail loudly after too long."""
    request = task.request
    verdict = judge_unavailable(attempts, runtime.settings.guards, random.random())
    if verdict.action is Action.GIVE_UP or request.is_eager:
        log.error(
            "database unreachable; guard gave up, task fails (not skipped)",
            task_id=request.id,
            task_name=task.name,
            db_id=db_id,
            kind=kind,
            attempts=attempts.db,
            error=str(exc),
        )
        raise exc
    record_recheck("database_unavailable")
    log.warning(
        "⚠️ database unreachable; task kept, re-checking",
        task_id=request.id,
        task_name=task.name,
        db_id=db_id,
        kind=kind,
        recheck=attempts.db + 1,
        delay_s=round(verdict.delay_s, 3),
        error=str(exc),
    )
    _recheck(
        task, replace(attempts, db=attempts.db + 1), verdict.delay_s, f"database unavailable: {exc}"
    )


def _recheck(task: Task, attempts: Attempts, delay_s: float, why: str) -> NoReturn:
    """Re-send the same message (same task id) with a countdown, like `Task.retry`, except:

    `retries` stays as it was, so the guard does not spend the task's own retry budget, and our
    counter rides in a header. The worker logs Retry at INFO and stores state RETRY meanwhile.
    """
    request = task.request
    sig = task.signature_from_request(
        request,
        countdown=delay_s,
        retries=request.retries,
        headers={ATTEMPTS_HEADER: attempts.as_header()},
    )
    if not request.is_eager:  # eager: Celery re-applies `sig` itself, at once
        sig.apply_async()
    raise Retry(why, when=delay_s, is_eager=request.is_eager, sig=sig)


def _skip(task: Task, kind: RowKind, db_id: str, reason: Reason) -> NoReturn:
    """Store REVOKED, make the skip visible (log, counters, Celery event), then end with Ignore."""
    request = task.request
    log.info(
        "🚫 task skipped: its row is gone or finished",
        task_id=request.id,
        task_name=task.name,
        db_id=db_id,
        kind=kind,
        reason=reason.value,
    )
    if not request.is_eager and _stores_result(task, request):
        task.backend.mark_as_revoked(
            request.id, f"guard: {reason.value} (row {db_id})", request=request
        )
    record_skip(
        GuardSkip(
            task_name=task.name,
            task_id=str(request.id),
            db_id=db_id,
            kind=kind,
            reason=reason.value,
        )
    )
    if not request.is_eager:
        guard_runtime().publish_skip(reason.value)
    if not request.is_eager:
        _send_skip_event(task, kind, db_id, reason)
    raise Ignore(f"{reason.value}: row {db_id}")


def _stores_result(task: Task, request: Any) -> bool:
    """Mirror Celery's own revoke: honour ignore_result unless errors are stored anyway."""
    ignored = getattr(request, "ignore_result", None)
    ignored = task.ignore_result if ignored is None else ignored
    return not ignored or bool(task.store_errors_even_if_ignored)


def _send_skip_event(task: Task, kind: RowKind, db_id: str, reason: Reason) -> None:
    """`Ignore` alone is invisible to Flower and exporters; this event is not. Best effort."""
    try:
        task.send_event(
            SKIP_EVENT, retry=False, name=task.name, db_id=db_id, kind=kind, reason=reason.value
        )
    except Exception as exc:
        log.warning("could not send the skip event", task_id=task.request.id, error=str(exc))
