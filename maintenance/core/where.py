"""`--where` filter expressions: select queued messages by their arguments or bound row id.

An expression is a small, closed language written in Python syntax, e.g.

    kwargs.tenant_id == 42 and args[0] in ("a1", "b2", 7)
    not (kwargs.priority < 3) or row_id is None

It is parsed with `ast.parse(mode="eval")` and checked against a whitelist; nothing is ever
evaluated as code (literals are read with `ast.literal_eval`). What is allowed:

- `and`, `or`, `not`, parentheses;
- comparisons with exactly one operator, `FIELD OP LITERAL`, where OP is `==`, `!=`, `<`, `<=`,
  `>`, `>=`, `in`, `not in`, or `is` / `is not` with `None` only;
- fields: `args[N]` (N a non-negative integer), `kwargs.NAME`, `kwargs["NAME"]`, `row_id` (the
  database id the message is bound to, as text), `task_id` and `task_name` (always text);
- literals: numbers, strings, `True`, `False`, `None`; after `in` / `not in` a tuple, list or set
  of those (and only there).

`LITERAL OP FIELD` is normalised to `FIELD OP' LITERAL` for `==`, `!=`, `<`, `<=`, `>`, `>=`
(`42 == kwargs.x` is `kwargs.x == 42`, `3 < args[0]` is `args[0] > 3`); for `in` and `is` the
field must come first, since `"a" in kwargs.tags` would mean something else.

Matching is for a purge, so it only says yes to what provably matches ("when unsure, do
nothing"). Each comparison is true, false or *unknown*, and `and`/`or`/`not` follow three-valued
(Kleene) logic, as in SQL; a message matches only when the whole expression is true:

- a missing field (args index out of range or args not a list, kwargs key absent or kwargs not a
  dict, a message whose arguments could not be read, `row_id` None) makes every comparison
  unknown, except `is None` (true) and `is not None` (false). `!=` and `not in` are unknown too,
  not true: a message we cannot read is not provably different, and `not (kwargs.x == 1)` must
  not select every message that lacks `x`;
- `==` / `!=` / `in` are type-strict: numbers equal numbers (`1 == 1.0`), strings strings, bools
  only bools (a JSON `true` is not `1`), None only None; a value of another type is provably not
  equal, so `!=` is true for it;
- ordering compares numbers with numbers and strings with strings; anything else (`"a" < 3`,
  None, lists) is unknown, never an exception;
- `row_id` is text (the database id normalised to str). An integer literal is compared by its
  text for `==`, `!=`, `in`, `not in` (`row_id == 42` matches `"42"`, not `"042"`), and by value
  for ordering (`row_id > 100` reads an integer row id, so `"99" > 100` is false, and a row id
  that is not an integer makes it unknown). Floats, bools and `== None` are refused for
  `row_id`: use `row_id is None` for messages that carry no id.
"""

from __future__ import annotations

import ast
import keyword
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

MAX_LENGTH: Final = 2000  # characters; a filter is typed by an operator, not generated
MAX_DEPTH: Final = 50  # AST levels; about 45 nested and/or/not, far beyond any real filter
FIELD_NAMES: Final = frozenset({"args", "kwargs", "row_id", "task_id", "task_name"})

Op: TypeAlias = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "is", "is not"]
Scalar: TypeAlias = int | float | str | bool | None
Value: TypeAlias = Scalar | tuple[Scalar, ...]
Truth: TypeAlias = bool | None  # None: unknown

_OPS: Final[dict[type[ast.cmpop], Op]] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}
_MIRROR: Final[dict[Op, Op]] = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ORDER: Final[dict[Op, Callable[[Any, Any], bool]]] = {
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
}
_TEXT_FIELDS: Final = frozenset({"task_id", "task_name"})
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_FIELDS_HINT = "fields are args[N], kwargs.NAME, kwargs['NAME'], row_id, task_id, task_name"
_LITERAL_HINT = "a number, a string, True, False or None"
# What each refused kind of node is, in the operator's words.
_REFUSED: Final[dict[type[ast.AST], str]] = {
    ast.Call: "a function call",
    ast.Lambda: "a lambda",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string",
    ast.NamedExpr: "an assignment expression (:=)",
    ast.BinOp: "arithmetic",
    ast.Starred: "unpacking (*)",
    ast.Slice: "a slice",
    ast.IfExp: "a conditional expression (x if c else y)",
    ast.Dict: "a dict literal",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.UnaryOp: "a unary operator (-, +, ~)",
    ast.Compare: "a comparison used as a value",
    ast.BoolOp: "and / or used as a value",
}


class WhereError(ValueError):
    """A `--where` expression that is refused: what is not allowed, and where (1-based line and
    character column of the culprit, and its source when short)."""

    def __init__(
        self,
        message: str,
        line: int | None = None,
        column: int | None = None,
        near: str | None = None,
    ):
        self.reason, self.line, self.column, self.near = message, line, column, near
        if column is not None:
            at = f"line {line}, column {column}" if line not in (None, 1) else f"column {column}"
            message = f"{message} (at {at}: {near})" if near else f"{message} (at {at})"
        super().__init__(message)


_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class MessageFields:
    """What a filter can see of one message. `args`/`kwargs` are as decoded from the body: None
    (or anything else) when it was not decoded or could not be read, so fields are missing."""

    task_id: str
    task_name: str
    row_id: str | None = None
    args: Any = None
    kwargs: Any = None


@dataclass(frozen=True, slots=True)
class _Field:
    """`args[index]`, `kwargs[key]`, or a top-level name (`row_id`, `task_id`, `task_name`)."""

    root: str
    index: int | None = None
    key: str | None = None

    def resolve(self, fields: MessageFields) -> Any:
        """The field's value, or `_MISSING`."""
        if self.root == "args":
            args = fields.args
            if isinstance(args, list | tuple) and self.index is not None and self.index < len(args):
                return args[self.index]
            return _MISSING
        if self.root == "kwargs":
            kwargs = fields.kwargs
            return kwargs.get(self.key, _MISSING) if isinstance(kwargs, dict) else _MISSING
        if self.root == "row_id":
            row_id: Any = fields.row_id
            return (
                _MISSING if row_id is None else row_id if isinstance(row_id, str) else str(row_id)
            )
        value: Any = getattr(fields, self.root)
        return value

    def __str__(self) -> str:
        if self.root == "args":
            return f"args[{self.index}]"
        if self.root == "kwargs":
            key = self.key or ""
            if key.isidentifier() and key.isascii() and not keyword.iskeyword(key):
                return f"kwargs.{key}"
            return f"kwargs[{key!r}]"
        return self.root


@dataclass(frozen=True, slots=True)
class _Compare:
    field: _Field
    op: Op
    value: Value
    numeric_row_id: bool = False  # `row_id < 100`: read the row id as an integer

    def truth(self, fields: MessageFields) -> Truth:
        try:
            return self._truth(self.field.resolve(fields))
        except Exception:  # a decoded value with a hostile __eq__/__lt__: unknown, not a crash
            return None

    def _truth(self, value: Any) -> Truth:
        if self.op == "is":
            return value is _MISSING or value is None
        if self.op == "is not":
            return value is not _MISSING and value is not None
        if value is _MISSING:
            return None
        if self.op in ("==", "!=", "in", "not in"):
            items = self.value if isinstance(self.value, tuple) else (self.value,)
            found = any(_equal(value, item) for item in items)
            return found is (self.op in ("==", "in"))
        if self.numeric_row_id:
            if not (isinstance(value, str) and _INTEGER_TEXT.fullmatch(value)):
                return None
            value = int(value)
        if _orderable(value, self.value):
            return _ORDER[self.op](value, self.value)
        return None

    def __str__(self) -> str:
        return f"{self.field} {self.op} {_render(self.value)}"


@dataclass(frozen=True, slots=True)
class _BoolOp:
    op: Literal["and", "or"]
    parts: tuple[_Node, ...]

    def truth(self, fields: MessageFields) -> Truth:
        decisive = self.op == "or"  # True decides an `or`, False an `and`
        unknown = False
        for part in self.parts:
            result = part.truth(fields)
            if result is decisive:
                return decisive
            unknown = unknown or result is None
        return None if unknown else not decisive

    def __str__(self) -> str:
        return f" {self.op} ".join(
            f"({part})" if isinstance(part, _BoolOp) else str(part) for part in self.parts
        )


@dataclass(frozen=True, slots=True)
class _Not:
    part: _Node

    def truth(self, fields: MessageFields) -> Truth:
        result = self.part.truth(fields)
        return None if result is None else not result

    def __str__(self) -> str:
        return f"not ({self.part})"


_Node: TypeAlias = _Compare | _BoolOp | _Not


@dataclass(frozen=True, slots=True)
class Where:
    """A compiled filter. `text` is its normalised source (it compiles to an equal `Where`);
    `uses` are the field roots it reads (see `fields_used`)."""

    text: str
    uses: frozenset[str]
    _root: _Node

    def matches(self, fields: MessageFields) -> bool:
        """Whether the message provably matches: unknown (a missing field) is no."""
        return self._root.truth(fields) is True

    @property
    def needs_body(self) -> bool:
        """Whether it reads args/kwargs, so the message body must be decoded."""
        return not self.uses.isdisjoint({"args", "kwargs"})


def compile_where(text: str) -> Where:
    """Parse and check a `--where` expression; raises WhereError saying what is refused."""
    if not isinstance(text, str):
        raise WhereError(f"a --where expression is text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise WhereError(f"expression too long: {len(text)} characters, at most {MAX_LENGTH}")
    source = text.strip()
    if not source:
        raise WhereError("empty expression: expected a comparison such as kwargs.tenant_id == 42")
    at = _Positions(text, source)
    try:
        with warnings.catch_warnings():
            # `1and x`, "\d": ambiguous text is refused, not parsed with a warning on stderr.
            # (The filter switch is process-wide: compile once at start-up, not per message.)
            warnings.simplefilter("error", SyntaxWarning)
            warnings.simplefilter("error", DeprecationWarning)
            tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:  # offset 0: at the end of the text
        offset = exc.offset if exc.offset else len((exc.text or "").rstrip("\n")) + 1
        line, column = at.shift(exc.lineno, offset)
        raise WhereError(f"not a valid expression: {exc.msg}", line, column) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; parser limits
        raise WhereError(f"not a valid expression: {exc}") from None
    _check_depth(tree, at)
    root = _Checker(source, at).condition(tree.body)
    return Where(text=str(root), uses=frozenset(_roots(root)), _root=root)


def fields_used(where: Where) -> set[str]:
    """The field roots a filter reads, of args, kwargs, row_id, task_id, task_name: whether
    the caller must decode the message body (args/kwargs) or extract the bound id (row_id)."""
    return set(where.uses)


# -- evaluation helpers ------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(value: Any, literal: Scalar) -> bool:
    """Type-strict equality: a JSON `true` is not `1`, `"42"` is not `42`."""
    if isinstance(literal, bool) or isinstance(value, bool):
        return isinstance(literal, bool) and isinstance(value, bool) and value is literal
    if _number(literal):
        return _number(value) and bool(value == literal)
    if isinstance(literal, str):
        return isinstance(value, str) and str.__eq__(value, literal)
    return value is None and literal is None


def _orderable(value: Any, literal: Value) -> bool:
    return (_number(value) and _number(literal)) or (
        isinstance(value, str) and isinstance(literal, str)
    )


def _render(value: Value) -> str:
    """A literal as source that reads back to the same value (`inf` is not a literal)."""
    if isinstance(value, tuple):
        items = ", ".join(_render(item) for item in value)
        return f"({items},)" if len(value) == 1 else f"({items})"
    if isinstance(value, float) and math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    return repr(value)


def _roots(node: _Node) -> set[str]:
    if isinstance(node, _Compare):
        return {node.field.root}
    if isinstance(node, _Not):
        return _roots(node.part)
    return set().union(*(_roots(part) for part in node.parts))


# -- checking ----------------------------------------------------------------------------------
class _Positions:
    """1-based line and character column in the text as given, before it was stripped."""

    def __init__(self, text: str, source: str):
        self.lines = source.splitlines() or [""]
        lead = text[: len(text) - len(text.lstrip())]
        self.line_shift = lead.count("\n")
        self.column_shift = len(lead) - (lead.rfind("\n") + 1)

    def shift(self, line: int | None, column: int | None) -> tuple[int | None, int | None]:
        if line is None or column is None:
            return None, None
        return line + self.line_shift, column + (self.column_shift if line == 1 else 0)

    def of(self, node: ast.AST) -> tuple[int | None, int | None]:
        """Where a node starts (ast's col_offset counts UTF-8 bytes, not characters)."""
        lineno: int | None = getattr(node, "lineno", None)
        offset: int | None = getattr(node, "col_offset", None)
        if lineno is None or offset is None or not 0 < lineno <= len(self.lines):
            return None, None
        prefix = self.lines[lineno - 1].encode()[:offset].decode(errors="replace")
        return self.shift(lineno, len(prefix) + 1)


def _check_depth(tree: ast.Expression, at: _Positions) -> None:
    """Refuse a tree deeper than MAX_DEPTH before the recursive checker walks it."""
    stack: list[tuple[ast.AST, int, ast.AST]] = [(tree.body, 0, tree.body)]
    while stack:
        node, depth, placed = stack.pop()
        placed = node if hasattr(node, "lineno") else placed  # `Load` contexts have no position
        if depth > MAX_DEPTH:
            line, column = at.of(placed)
            raise WhereError(f"expression nested too deeply (more than {MAX_DEPTH})", line, column)
        stack.extend((child, depth + 1, placed) for child in ast.iter_child_nodes(node))


class _Checker:
    """The whitelist walk: turns an ast into `_Node`s, or raises WhereError at the culprit."""

    def __init__(self, source: str, at: _Positions):
        self.source, self.at = source, at

    def refuse(self, message: str, node: ast.AST) -> WhereError:
        segment = ast.get_source_segment(self.source, node) or ""
        near = segment if segment and len(segment) <= 60 and segment != self.source else None
        return WhereError(message, *self.at.of(node), near=near)

    def not_allowed(self, node: ast.AST) -> WhereError:
        what = _REFUSED.get(type(node), f"{type(node).__name__} syntax")
        return self.refuse(f"{what} is not allowed in a --where expression", node)

    def condition(self, node: ast.expr) -> _Node:
        if isinstance(node, ast.BoolOp):
            op: Literal["and", "or"] = "and" if isinstance(node.op, ast.And) else "or"
            parts: list[_Node] = []
            for value in node.values:
                part = self.condition(value)
                same = isinstance(part, _BoolOp) and part.op == op
                parts.extend(part.parts if isinstance(part, _BoolOp) and same else (part,))
            return _BoolOp(op, tuple(parts))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return _Not(self.condition(node.operand))
        if isinstance(node, ast.Compare):
            return self.comparison(node)
        if isinstance(node, ast.Name | ast.Attribute | ast.Subscript):
            field = self.field(node)
            raise self.refuse(
                f"{field} alone is not a condition: compare it, e.g. {field} == 1 or "
                f"{field} is not None",
                node,
            )
        if isinstance(node, ast.Constant) or (
            isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant)
        ):
            raise self.refuse(
                "a literal alone is not a condition: compare a field with it, e.g. "
                "kwargs.tenant_id == 42",
                node,
            )
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            raise self.refuse("a tuple, list or set is not a condition", node)
        raise self.not_allowed(node)

    def comparison(self, node: ast.Compare) -> _Compare:
        if len(node.ops) != 1:
            raise self.refuse(
                "chained comparisons are not allowed: join them with and, "
                "e.g. args[0] > 1 and args[0] < 3",
                node,
            )
        op = _OPS[type(node.ops[0])]
        left, right = node.left, node.comparators[0]
        if self.is_field(left):
            field = self.field(left)
            if self.is_field(right):
                self.field(right)  # a malformed field is the better error
                raise self.refuse("compare a field with a literal, not with another field", node)
            return self.compare(field, op, right)
        self.operand(left)
        if not self.is_field(right):
            self.operand(right)
            raise self.refuse(f"a comparison needs a field on one side ({_FIELDS_HINT})", node)
        field = self.field(right)
        if op not in _MIRROR:
            raise self.refuse(f"write the field first: {field} {op} ...", node)
        return self.compare(field, _MIRROR[op], left)

    @staticmethod
    def is_field(node: ast.expr) -> bool:
        return isinstance(node, ast.Name | ast.Attribute | ast.Subscript)

    def operand(self, node: ast.expr) -> None:
        """A non-field operand must at least look like a literal."""
        if not isinstance(node, ast.Constant | ast.Tuple | ast.List | ast.Set | ast.UnaryOp):
            raise self.not_allowed(node)

    def field(self, node: ast.expr) -> _Field:
        if isinstance(node, ast.Name):
            if node.id in ("row_id", "task_id", "task_name"):
                return _Field(node.id)
            if node.id == "args":
                raise self.refuse("args needs an index: args[N]", node)
            if node.id == "kwargs":
                raise self.refuse("kwargs needs a key: kwargs.NAME or kwargs['NAME']", node)
            raise self.refuse(
                f"unknown name {node.id!r} (a string needs quotes); {_FIELDS_HINT}", node
            )
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "kwargs":
                return _Field("kwargs", key=node.attr)
            if isinstance(node.value, ast.Call):
                raise self.not_allowed(node.value)
            raise self.refuse(
                f"attribute .{node.attr} is not allowed: only kwargs.NAME reads a key", node
            )
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        raise self.not_allowed(node)

    def subscript(self, node: ast.Subscript) -> _Field:
        base, index = node.value, node.slice
        if isinstance(index, ast.Slice):
            raise self.not_allowed(index)
        if isinstance(base, ast.Name) and base.id == "args":
            if (
                isinstance(index, ast.Constant)
                and isinstance(index.value, int)
                and not isinstance(index.value, bool)
            ):
                return _Field("args", index=index.value)
            raise self.refuse("args index must be a non-negative integer literal: args[N]", node)
        if isinstance(base, ast.Name) and base.id == "kwargs":
            if isinstance(index, ast.Constant) and isinstance(index.value, str):
                return _Field("kwargs", key=index.value)
            raise self.refuse("kwargs key must be a string literal: kwargs['NAME']", node)
        if isinstance(base, ast.Call):
            raise self.not_allowed(base)
        raise self.refuse("only args[N] and kwargs['NAME'] may be subscripted", node)

    def compare(self, field: _Field, op: Op, node: ast.expr) -> _Compare:
        """Check the literal against the operator and the field; normalise row_id integers."""
        if op in ("is", "is not"):
            if not (isinstance(node, ast.Constant) and node.value is None):
                raise self.refuse(f"'{op}' is only allowed with None (use == for values)", node)
            if field.root in _TEXT_FIELDS:
                raise self.refuse(f"{field} is never None", node)
            return _Compare(field, op, None)
        if op in ("in", "not in"):
            if not isinstance(node, ast.Tuple | ast.List | ast.Set):
                if self.is_field(node):
                    self.field(node)
                self.operand(node)
                raise self.refuse(
                    f"'{op}' needs a tuple, list or set of literals, e.g. (1, 2)", node
                )
            items = tuple(self.scalar(field, op, item) for item in node.elts)
            return _Compare(field, op, items)
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            raise self.refuse("a tuple, list or set is only allowed after in / not in", node)
        value = self.scalar(field, op, node)
        if op in _ORDER and not (_number(value) or isinstance(value, str)):
            raise self.refuse(f"'{op}' needs a number or a string, not {value!r}", node)
        if field.root == "row_id" and op in _ORDER and isinstance(value, int):
            return _Compare(field, op, value, numeric_row_id=True)
        return _Compare(field, op, value)

    def scalar(self, field: _Field, op: Op, node: ast.expr) -> Scalar:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float | str | bool | None):
                raise self.refuse(f"a literal here must be {_LITERAL_HINT}", node)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            if not (isinstance(node.operand, ast.Constant) and _number(node.operand.value)):
                raise self.refuse("a sign is only allowed before a number", node)
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            raise self.refuse("containers inside containers are not allowed", node)
        elif self.is_field(node):
            self.field(node)
            raise self.refuse("compare a field with a literal, not with another field", node)
        else:
            raise self.not_allowed(node)
        value: Scalar = ast.literal_eval(node)  # a checked Constant or signed number
        return self.for_field(field, op, value, node)

    def for_field(self, field: _Field, op: Op, value: Scalar, node: ast.expr) -> Scalar:
        """The text fields take strings only; row_id also takes integers, read as their text
        (except under ordering, where the row id is read as an integer instead)."""
        if field.root in _TEXT_FIELDS and not isinstance(value, str):
            raise self.refuse(f"{field} is text: compare it with a string", node)
        if field.root != "row_id" or isinstance(value, str):
            return value
        if value is None:
            raise self.refuse(
                "row_id is None when a message carries no id: use row_id is None", node
            )
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.refuse("row_id is text: compare it with a string or an integer", node)
        return value if op in _ORDER else str(value)
