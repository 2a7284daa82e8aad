"""Read a kombu/Celery message envelope: task id, task name and the bound database id.

Nothing in a message is ever executed. JSON bodies are decoded for args/kwargs; protocol-2
messages of any other serializer are read through their `argsrepr`/`kwargsrepr` headers with
`ast.literal_eval`; protocol-1 pickle bodies (which have no such headers) through an unpickler
that refuses every global, so only plain data (dicts, lists, strings, numbers) can come out. A
message we cannot read becomes a `Message` with a `problem`, never an exception.
"""

from __future__ import annotations

import ast
import binascii
import io
import pickle
from dataclasses import dataclass, replace
from typing import Any

import orjson

from maintenance.core.bindings import Binding, BindingTable
from maintenance.core.models import Bound, Location, Message, Reason

_JSON_TYPES = ("application/json", "application/x-json")
# The task id of a tombstone the quarantine left in place of a message (see adapters.quarantine).
TOMBSTONE_ID_PREFIX = "task-maintenance-tombstone-"
_PICKLE_TYPE = "application/x-python-serialize"
# quick_read's answer: (task id, row kind, database id, task name, raw delivery tag, eta,
# expires).
Quick = tuple[str, Bound, str | None, str, Any, Any, Any]


def parse_list_element(raw: bytes, location: Location, bindings: BindingTable) -> Message:
    """A queue list element is the JSON-encoded kombu message."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _unreadable(location, f"not JSON: {exc}")
    return read_envelope(payload, location, bindings)


def parse_unacked_entry(raw: bytes, location: Location, bindings: BindingTable) -> Message:
    """An `unacked` hash value is `[message, exchange, routing_key]`."""
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _unreadable(location, f"not JSON: {exc}")
    if not (isinstance(entry, list) and entry and isinstance(entry[0], dict)):
        return _unreadable(location, "unacked entry is not [message, exchange, routing_key]")
    if len(entry) >= 3 and isinstance(entry[2], str):
        location = replace(location, queue=entry[2])
    return read_envelope(entry[0], location, bindings)


def read_envelope(payload: Any, location: Location, bindings: BindingTable) -> Message:
    if not isinstance(payload, dict):
        return _unreadable(location, "message is not a JSON object")
    headers = payload.get("headers") or {}
    properties = payload.get("properties") or {}
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        return _unreadable(location, "headers/properties are not objects")
    location = _with_tag(location, properties.get("delivery_tag"))
    task_name, task_id = headers.get("task"), headers.get("id")
    body_v1: dict[str, Any] | None = None
    if not task_name:  # protocol 1 keeps everything in the body
        decoded = _decode_v1_body(payload, properties)
        if isinstance(decoded, dict):
            body_v1 = decoded
            task_name, task_id = decoded.get("task"), decoded.get("id")
    if not isinstance(task_name, str) or not isinstance(task_id, str):
        return _unreadable(location, "no task name or id in the headers")
    binding = bindings.lookup(task_name)
    eta, expires = headers.get("eta"), headers.get("expires")
    if binding is None:  # unmanaged: counted, never judged
        return Message(task_id, task_name, location, eta=eta, expires=expires)
    db_id, problem, detail = _bound_id(binding, task_id, payload, headers, properties, body_v1)
    if problem is not None:
        return Message(
            task_id,
            task_name,
            location,
            row_kind=binding.kind,
            problem=problem,
            detail=detail,
            eta=eta,
            expires=expires,
        )
    return Message(
        task_id,
        task_name,
        location,
        db_id=db_id,
        row_kind=binding.kind,
        eta=eta,
        expires=expires,
    )


def quick_read(raw: bytes, bindings: BindingTable) -> Quick | None:
    """What an ordinary queued message says, without building a `Message` for it.

    The scan's hot path, run a million times: building a Message and its Location per message
    costs more than reading it. It answers only where `parse_list_element` would give a message
    that can be judged: bound, with its id (kind "task"/"sub_task"), or unmanaged (kind "", id
    None). Anything else (unreadable, protocol 1, no bound id, a tombstone of ours) is None,
    and the caller reads that message the full way. The usual message's id is read in one call
    (`_usual_id`); any message it does not read a text or integer id from goes through
    `_bound_id`, as the full way does. `quick_message` turns an answer into the Message
    parse_list_element would have given, for the few that become findings.
    """
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    headers, properties = payload.get("headers"), payload.get("properties")
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        return None
    task_name, task_id = headers.get("task"), headers.get("id")
    if not task_name or not isinstance(task_name, str) or not isinstance(task_id, str):
        return None
    if task_id.startswith(TOMBSTONE_ID_PREFIX):  # ours, whatever its task name: set aside
        return None
    tag, eta, expires = properties.get("delivery_tag"), headers.get("eta"), headers.get("expires")
    access = bindings.access(task_name)
    if access is None:
        return task_id, "", None, task_name, tag, eta, expires
    binding, index, name = access
    if index is None and name is None:  # id_from = "task_id"
        return task_id, binding.kind, task_id, task_name, tag, eta, expires
    db_id = _usual_id(payload, headers, properties, index, name)
    if type(db_id) is str:  # exact types: a bool is an int, and no id
        return task_id, binding.kind, db_id, task_name, tag, eta, expires
    if type(db_id) is int:
        return task_id, binding.kind, str(db_id), task_name, tag, eta, expires
    db_id, problem, _ = _bound_id(binding, task_id, payload, headers, properties, None)
    if problem is not None:
        return None
    return task_id, binding.kind, db_id, task_name, tag, eta, expires


def quick_message(read: Quick, location: Location, index: int | None = None) -> Message:
    """The Message `parse_list_element` gives for a message that `quick_read` answered, at
    list `index` of `location` (its own index when None).

    The Location is built directly, as `replace(location, index=...)` then `_with_tag` would
    build it: two `dataclasses.replace` per finding cost more than the rest of judging it."""
    task_id, row_kind, db_id, task_name, tag, eta, expires = read
    place = Location(
        location.where,
        location.queue,
        location.priority,
        location.key,
        location.index if index is None else index,
        str(tag) if tag and not location.delivery_tag else location.delivery_tag,
        location.worker,
        location.state,
    )
    return Message(
        task_id, task_name, place, db_id=db_id, row_kind=row_kind, eta=eta, expires=expires
    )


def _with_tag(location: Location, tag: Any) -> Location:
    """The message's own delivery tag, unless the place it was read from already names one."""
    if tag and not location.delivery_tag:
        return replace(location, delivery_tag=str(tag))
    return location


def _bound_id(
    binding: Binding,
    task_id: str,
    payload: dict[str, Any],
    headers: dict[str, Any],
    properties: dict[str, Any],
    body_v1: dict[str, Any] | None,
) -> tuple[str | None, Reason | None, str]:
    """The database id a managed message carries: (id, None, "") or (None, reason, detail)."""
    args: Any = None
    kwargs: Any = None
    if binding.needs_body:
        if body_v1 is not None:
            args, kwargs = body_v1.get("args"), body_v1.get("kwargs")
        else:
            args, kwargs, problem = _args_kwargs(payload, headers, properties)
            if problem:
                return None, Reason.BAD_ENVELOPE, problem
    db_id = binding.extract(task_id, args, kwargs)
    if db_id is None or isinstance(db_id, dict | list | float | bool):
        return None, Reason.NO_BOUND_ID, f"{binding.id_from} missing or not an id"
    return str(db_id), None, ""


def _usual_id(
    payload: dict[str, Any],
    headers: dict[str, Any],
    properties: dict[str, Any],
    index: int | None,
    name: str | None,
) -> Any:
    """The id the usual message carries, read the way `_bound_id` reads it but in one call:
    a JSON `[args, kwargs, embed]` body, base64 or not, uncompressed. None when the message is
    not that usual; quick_read then leaves it to `_bound_id`, so only str and int answers are
    ever trusted from here."""
    body = payload.get("body")
    if (
        not isinstance(body, str)
        or payload.get("content-type") not in _JSON_TYPES
        or headers.get("compression")
    ):
        return None
    try:
        decoded = orjson.loads(
            binascii.a2b_base64(body) if properties.get("body_encoding") == "base64" else body
        )
    except ValueError:  # binascii.Error, orjson.JSONDecodeError
        return None
    if not isinstance(decoded, list) or len(decoded) < 2:
        return None
    if index is not None:
        args = decoded[0]
        return args[index] if isinstance(args, list) and index < len(args) else None
    kwargs = decoded[1]
    return kwargs.get(name) if isinstance(kwargs, dict) else None


def _args_kwargs(
    payload: dict[str, Any], headers: dict[str, Any], properties: dict[str, Any]
) -> tuple[Any, Any, str]:
    if payload.get("content-type") in _JSON_TYPES and not headers.get("compression"):
        body = _decode_json_body(payload, properties)
        if isinstance(body, list) and len(body) >= 2:
            return body[0], body[1], ""
        if body is not _FAILED:
            return None, None, "JSON body is not [args, kwargs, embed]"
    return _from_repr(headers)


def _from_repr(headers: dict[str, Any]) -> tuple[Any, Any, str]:
    """Non-JSON serializers: the worker-side reprs are the only safe view of the arguments."""
    try:
        args = ast.literal_eval(headers.get("argsrepr") or "()")
        kwargs = ast.literal_eval(headers.get("kwargsrepr") or "{}")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        return None, None, f"argsrepr/kwargsrepr not literal: {type(exc).__name__}"
    return args, kwargs, ""


_FAILED = object()


def _decode_json_body(payload: dict[str, Any], properties: dict[str, Any]) -> Any:
    body = payload.get("body")
    if not isinstance(body, str):
        return _FAILED
    try:
        data: bytes | str = body
        if properties.get("body_encoding") == "base64":
            # what base64.b64decode(body) does, without its per-call Python overhead
            data = binascii.a2b_base64(body)
        return orjson.loads(data)
    except (binascii.Error, ValueError):
        return _FAILED


@dataclass(frozen=True, slots=True)
class Call:
    """What one message asks a worker to run: the task and its arguments, as plain data."""

    task_id: str
    task_name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def read_call(raw: bytes) -> Call | None:
    """The task name, id and arguments of a queue list element, read the way the scan reads
    bound ids (nothing unpickled beyond plain data); None when the message is unreadable.
    `config init` and `config check` look at samples of these to find which argument is a row id.
    """
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    headers, properties = payload.get("headers") or {}, payload.get("properties") or {}
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        return None
    task_name, task_id = headers.get("task"), headers.get("id")
    if task_name:
        args, kwargs, problem = _args_kwargs(payload, headers, properties)
    else:  # protocol 1 keeps everything in the body
        body = _decode_v1_body(payload, properties)
        if not isinstance(body, dict):
            return None
        task_name, task_id = body.get("task"), body.get("id")
        args, kwargs, problem = body.get("args"), body.get("kwargs"), ""
    if problem or not isinstance(task_name, str) or not isinstance(task_id, str):
        return None
    return Call(
        task_id,
        task_name,
        tuple(args) if isinstance(args, list | tuple) else (),
        dict(kwargs) if isinstance(kwargs, dict) else {},
    )


def is_tombstone(msg: Message) -> bool:
    """One of ours: left by a quarantine that did not get to compact its list."""
    return msg.task_id.startswith(TOMBSTONE_ID_PREFIX)


def _decode_v1_body(payload: dict[str, Any], properties: dict[str, Any]) -> Any:
    """A protocol-1 body: a JSON object, or a pickle read as plain data only."""
    if payload.get("content-type") != _PICKLE_TYPE:
        return _decode_json_body(payload, properties)
    body = payload.get("body")
    if not isinstance(body, str) or properties.get("body_encoding") != "base64":
        return _FAILED
    try:
        return _DataOnlyUnpickler(io.BytesIO(binascii.a2b_base64(body))).load()
    except Exception:  # any malformed or refused pickle: the message is unreadable, not judged
        return _FAILED


class _DataOnlyUnpickler(pickle.Unpickler):
    """Every global is refused (classes, functions, reducers, extension codes all go through
    `find_class`), so loading can build dicts, lists, strings and numbers and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _unreadable(location: Location, detail: str) -> Message:
    return Message("", "", location, problem=Reason.BAD_ENVELOPE, detail=detail)


def args_kwargs(payload: Any) -> tuple[Any, Any, str]:
    """A message's arguments for a listing or a `--where` filter: (args, kwargs, text shown).

    A JSON body is decoded; any other serializer is read through its `argsrepr`/`kwargsrepr`
    headers (literals only); a protocol-1 body (pickle, or no such headers) is not shown at all:
    a listing must never unpickle, even as plain data. Unreadable arguments are (None, None)."""
    if not isinstance(payload, dict):
        return None, None, "(not a message)"
    headers = payload.get("headers") or {}
    properties = payload.get("properties") or {}
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        return None, None, "(not a message)"
    if not headers.get("task"):
        return None, None, "(protocol 1 body: not shown)"
    if payload.get("content-type") in _JSON_TYPES and not headers.get("compression"):
        body = _decode_json_body(payload, properties)
        if isinstance(body, list) and len(body) >= 2:
            shown = orjson.dumps([body[0], body[1]], default=str).decode(errors="replace")
            return body[0], body[1], shown
    args, kwargs, problem = _from_repr(headers)
    if problem:
        return None, None, f"({problem})"
    return args, kwargs, f"{headers.get('argsrepr') or '()'} {headers.get('kwargsrepr') or '{}'}"
