"""`--where` filters: the whitelist, the three-valued matching, and hostile input."""

from __future__ import annotations

import ast
import random
from pathlib import Path
from typing import Any

import pytest

from maintenance.core import where as where_module
from maintenance.core.where import (
    MAX_DEPTH,
    MAX_LENGTH,
    MessageFields,
    Where,
    WhereError,
    compile_where,
    fields_used,
)


def msg(
    args: Any = None,
    kwargs: Any = None,
    row_id: str | None = None,
    task_id: str = "t-1",
    task_name: str = "demo.process",
) -> MessageFields:
    return MessageFields(
        task_id=task_id, task_name=task_name, row_id=row_id, args=args, kwargs=kwargs
    )


def matches(text: str, fields: MessageFields) -> bool:
    return compile_where(text).matches(fields)


# -- what compiles, and its normalised text ----------------------------------------------------
@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("kwargs.tenant_id == 42", "kwargs.tenant_id == 42"),
        ('args[0] in ("a1", "b2", 7)', "args[0] in ('a1', 'b2', 7)"),
        (
            'kwargs["user"] != "bob" and args[1] >= 10',
            "kwargs.user != 'bob' and args[1] >= 10",
        ),
        ('row_id == "3f2c"', "row_id == '3f2c'"),
        (
            "not (kwargs.priority < 3) or kwargs.missing == None",
            "not (kwargs.priority < 3) or kwargs.missing == None",
        ),
        ("42 == kwargs.x", "kwargs.x == 42"),
        ("3 < args[0]", "args[0] > 3"),
        ("3 >= args[0]", "args[0] <= 3"),
        ("'a' != task_name", "task_name != 'a'"),
        ('kwargs["a-b"] == 1', "kwargs['a-b'] == 1"),
        ('kwargs["class"] == 1', "kwargs['class'] == 1"),
        ("kwargs.x == 1e999", "kwargs.x == 1e999"),
        ("kwargs.x > -2.5", "kwargs.x > -2.5"),
        ("args[0] in ['a']", "args[0] in ('a',)"),
        ("args[0] not in {1}", "args[0] not in (1,)"),
        ("args[0] in ()", "args[0] in ()"),
        ("row_id in (1, 'x')", "row_id in ('1', 'x')"),
        ("row_id == 42", "row_id == '42'"),
        ("row_id > 100", "row_id > 100"),
        ("kwargs.x is None", "kwargs.x is None"),
        ("kwargs.x is not None", "kwargs.x is not None"),
        ("task_id == 'abc'", "task_id == 'abc'"),
        ("args[10_0] == 1", "args[100] == 1"),
        # and/or are flattened, a different kind nested inside keeps its parentheses
        (
            "(args[0] == 1 and args[1] == 2) and args[2] == 3",
            "args[0] == 1 and args[1] == 2 and args[2] == 3",
        ),
        (
            "args[0] == 1 or args[1] == 2 and args[2] == 3",
            "args[0] == 1 or (args[1] == 2 and args[2] == 3)",
        ),
        ("not not args[0] == 1", "not (not (args[0] == 1))"),
        ("  kwargs.x == 1\n", "kwargs.x == 1"),
        ("(kwargs.x ==\n  1)", "kwargs.x == 1"),
        ("kwargs.x == 1  # a comment", "kwargs.x == 1"),
        (r'kwargs.x == r"\d"', r"kwargs.x == '\\d'"),
    ],
)
def test_accepted_expressions_normalise(text: str, normalised: str) -> None:
    """Accepted filters compile; `text` is normalised and compiles back to an equal Where."""
    compiled = compile_where(text)
    assert isinstance(compiled, Where)
    assert compiled.text == normalised
    assert compile_where(compiled.text) == compiled


# -- every operator ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("kwargs.n == 5", {"n": 5}, True),
        ("kwargs.n == 5", {"n": 6}, False),
        ("kwargs.n == 5", {"n": 5.0}, True),
        ("kwargs.n != 5", {"n": 6}, True),
        ("kwargs.n != 5", {"n": 5}, False),
        ("kwargs.n < 5", {"n": 4}, True),
        ("kwargs.n < 5", {"n": 5}, False),
        ("kwargs.n <= 5", {"n": 5}, True),
        ("kwargs.n <= 5", {"n": 6}, False),
        ("kwargs.n > 5", {"n": 6}, True),
        ("kwargs.n > 5", {"n": 5}, False),
        ("kwargs.n >= 5", {"n": 5}, True),
        ("kwargs.n >= 5", {"n": 4}, False),
        ("kwargs.s < 'b'", {"s": "a"}, True),
        ("kwargs.s >= 'b'", {"s": "a"}, False),
        ("kwargs.n in (1, 2)", {"n": 2}, True),
        ("kwargs.n in (1, 2)", {"n": 3}, False),
        ("kwargs.n not in (1, 2)", {"n": 3}, True),
        ("kwargs.n not in (1, 2)", {"n": 1}, False),
        ("kwargs.n is None", {"n": None}, True),
        ("kwargs.n is None", {"n": 0}, False),
        ("kwargs.n is not None", {"n": 0}, True),
        ("kwargs.n is not None", {"n": None}, False),
        ("kwargs.n == None", {"n": None}, True),
        ("kwargs.n != None", {"n": 1}, True),
        ("kwargs.b == True", {"b": True}, True),
        ("kwargs.b == False", {"b": True}, False),
        ("kwargs.s == 'x'", {"s": "x"}, True),
        ("kwargs.n == -3", {"n": -3}, True),
    ],
)
def test_every_operator(text: str, kwargs: dict[str, Any], expected: bool) -> None:
    """Each operator on a present value of a comparable type behaves as in Python."""
    assert matches(text, msg(kwargs=kwargs)) is expected


def test_fields_are_read_from_the_right_place() -> None:
    """args by index (list or tuple), kwargs by key in either spelling, and the three names."""
    fields = msg(
        args=["a", 7], kwargs={"user": "bob"}, row_id="r9", task_id="tid", task_name="demo.x"
    )
    assert matches("args[0] == 'a' and args[1] == 7", fields)
    assert matches("args[1] == 7", msg(args=("a", 7)))
    assert matches("kwargs.user == 'bob' and kwargs['user'] == 'bob'", fields)
    assert matches("row_id == 'r9' and task_id == 'tid' and task_name == 'demo.x'", fields)
    assert not matches("task_name == 'demo.y'", fields)


# -- and / or / not ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("args[0] == 1 and args[1] == 2", True),
        ("args[0] == 1 and args[1] == 3", False),
        ("args[0] == 9 or args[1] == 2", True),
        ("args[0] == 9 or args[1] == 9", False),
        ("not (args[0] == 9)", True),
        ("not (args[0] == 1)", False),
        ("not args[0] == 1 or args[1] == 2", True),
        ("args[0] == 1 and (args[1] == 9 or args[1] == 2)", True),
        ("not (args[0] == 1 and args[1] == 9)", True),
        # a missing field (args[5]) is unknown: decisive operands still decide
        ("args[5] == 1 or args[0] == 1", True),
        ("args[5] == 1 and args[0] == 9", False),
        ("not (args[5] == 1 and args[0] == 9)", True),
        # ...but unknown is never turned into a match
        ("args[5] == 1 or args[0] == 9", False),
        ("args[5] == 1 and args[0] == 1", False),
        ("not (args[5] == 1)", False),
        ("not (args[5] != 1)", False),
        ("not (not (args[5] == 1))", False),
    ],
)
def test_boolean_logic_is_three_valued(text: str, expected: bool) -> None:
    """and/or/not follow Kleene logic over true/false/unknown; only true matches."""
    assert matches(text, msg(args=[1, 2])) is expected


# -- missing fields ------------------------------------------------------------------------------
MISSING_CASES = [
    pytest.param(msg(args=[1]), "args[3]", id="index-out-of-range"),
    pytest.param(msg(args=None), "args[0]", id="args-none"),
    pytest.param(msg(args={"0": 1}), "args[0]", id="args-a-dict"),
    pytest.param(msg(args="abc"), "args[0]", id="args-a-string"),
    pytest.param(msg(kwargs={"a": 1}), "kwargs.b", id="key-absent"),
    pytest.param(msg(kwargs=None), "kwargs.a", id="kwargs-none"),
    pytest.param(msg(kwargs=[("a", 1)]), "kwargs.a", id="kwargs-a-list"),
    pytest.param(msg(row_id=None), "row_id", id="no-row-id"),
]


@pytest.mark.parametrize(("fields", "field"), MISSING_CASES)
@pytest.mark.parametrize(
    "condition",
    ["== 1", "!= 1", "< 1", "<= 1", "> 1", ">= 1", "in (1, 2)", "not in (1, 2)", "is not None"],
)
def test_a_missing_field_matches_nothing(fields: MessageFields, field: str, condition: str) -> None:
    """A purge takes only what provably matches: `!=` and `not in` are no more true of a field
    we cannot see than `==` is, and `not (...)` does not make them so."""
    text = f"{field} {condition}"
    assert matches(text, fields) is False
    if condition != "is not None":
        assert matches(f"not ({text})", fields) is False


@pytest.mark.parametrize(("fields", "field"), MISSING_CASES)
def test_a_missing_field_is_none(fields: MessageFields, field: str) -> None:
    """`is None` is the one way to select messages that lack a field."""
    assert matches(f"{field} is None", fields) is True
    assert matches(f"not ({field} is None)", fields) is False


def test_a_present_none_differs_from_a_missing_key() -> None:
    """`== None` needs a value that is None (JSON null); `is None` takes a missing key too."""
    assert matches("kwargs.a == None", msg(kwargs={"a": None}))
    assert not matches("kwargs.a == None", msg(kwargs={}))
    assert matches("kwargs.a is None", msg(kwargs={}))
    assert matches("kwargs.a != 1", msg(kwargs={"a": None}))


# -- type mismatches -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("kwargs.v < 3", "a", False),
        ("kwargs.v >= 3", "a", False),
        ("not (kwargs.v < 3)", "a", False),  # incomparable is unknown, not false
        ("kwargs.v > 'a'", 3, False),
        ("kwargs.v < 3", None, False),
        ("kwargs.v < 3", [1], False),
        ("kwargs.v < 3", {"a": 1}, False),
        ("kwargs.v < 3", True, False),  # a bool is not a number here
        ("kwargs.v == 42", "42", False),  # provably different types: not equal
        ("kwargs.v != 42", "42", True),
        ("kwargs.v == 1", True, False),
        ("kwargs.v == True", 1, False),
        ("kwargs.v != 1", True, True),
        ("kwargs.v in (1, 2)", True, False),
        ("kwargs.v in (True,)", True, True),
        ("kwargs.v == 1", [1], False),
        ("kwargs.v != 1", [1], True),
        ("kwargs.v in (1, 'a')", [1], False),
        ("kwargs.v == None", 0, False),
        ("kwargs.v == 0", None, False),
        ("kwargs.v == 1", 1.0, True),
        ("kwargs.v < 1e999", 10**400, True),
    ],
)
def test_type_mismatches_never_raise(text: str, value: Any, expected: bool) -> None:
    """Equality is type-strict and ordering across types is unknown: never an exception."""
    assert matches(text, msg(kwargs={"v": value})) is expected


class Hostile:
    """A decoded value whose comparisons raise (a pickled object could be anything)."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("boom")

    def __lt__(self, other: object) -> bool:
        raise RuntimeError("boom")

    __hash__ = object.__hash__


class HostileInt(int):
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("boom")

    def __lt__(self, other: object) -> bool:
        raise RuntimeError("boom")

    __hash__ = int.__hash__


@pytest.mark.parametrize("value", [Hostile(), HostileInt(3), float("nan")])
@pytest.mark.parametrize(
    "text", ["kwargs.v == 3", "kwargs.v != 3", "kwargs.v < 3", "kwargs.v in (3, 4)"]
)
def test_odd_values_do_not_raise(value: Any, text: str) -> None:
    """Whatever came out of a message, matching answers a bool."""
    assert isinstance(matches(text, msg(kwargs={"v": value})), bool)


# -- literal containers --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("container", "value", "expected"),
    [
        ("(1, 2)", 2, True),
        ("[1, 2]", 2, True),
        ("{1, 2}", 2, True),
        ("('a',)", "a", True),
        ("()", "a", False),
        ("(None, 'x')", None, True),
        ("(1, 'a', True, None, 2.5)", 2.5, True),
        ("(1, 2)", [1, 2], False),  # an unhashable value is compared, not hashed
        ("('1', '2')", 1, False),
    ],
)
def test_literal_containers(container: str, value: Any, expected: bool) -> None:
    """`in` takes a tuple, list or set of literals; `not in` is its negation on a present value."""
    fields = msg(kwargs={"v": value})
    assert matches(f"kwargs.v in {container}", fields) is expected
    assert matches(f"kwargs.v not in {container}", fields) is (not expected)


# -- row_id --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "row_id", "expected"),
    [
        ("row_id == 42", "42", True),
        ("row_id == '42'", "42", True),
        ("row_id == 42", "042", False),  # text comparison: "042" is another id
        ("row_id != 42", "42", False),
        ("row_id != 42", "43", True),
        ("row_id in (41, 42)", "42", True),
        ("row_id not in (41, 42)", "42", False),
        ("row_id > 100", "99", False),  # read as integers, not as text ("99" > "100")
        ("row_id > 100", "101", True),
        ("row_id <= -1", "-5", True),
        ("row_id > 1", "3f2c", False),  # not an integer: unknown
        ("not (row_id > 1)", "3f2c", False),
        ("row_id > '100'", "99", True),  # a string literal compares as text
        ("row_id == '3f2c-aa'", "3f2c-aa", True),
        ("row_id is None", None, True),
        ("row_id is not None", "1", True),
        ("row_id == 1", None, False),
        ("row_id != 1", None, False),
    ],
)
def test_row_id_is_text(text: str, row_id: str | None, expected: bool) -> None:
    """Integer literals are read as text for ==, != and in; ordering reads an integer row id."""
    assert matches(text, msg(row_id=row_id)) is expected


def test_a_row_id_passed_as_a_number_is_normalised_to_text() -> None:
    """A caller that hands over the raw id still gets the text rule."""
    fields = MessageFields(task_id="t", task_name="n", row_id=42)  # type: ignore[arg-type]
    assert matches("row_id == '42'", fields)


def test_a_huge_integer_row_id_is_unknown() -> None:
    """int() refuses over 4300 digits; that is an unknown comparison, not a crash."""
    assert not matches("row_id > 1", msg(row_id="9" * 5000))


# -- fields_used ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "used", "needs_body"),
    [
        ("row_id == 'a'", {"row_id"}, False),
        ("task_name == 'a' or task_id == 'b'", {"task_name", "task_id"}, False),
        ("args[0] == 1", {"args"}, True),
        ("kwargs.x == 1 and not (row_id is None)", {"kwargs", "row_id"}, True),
        ("args[0] == 1 and kwargs['y'] == 2 or row_id == 3", {"args", "kwargs", "row_id"}, True),
    ],
)
def test_fields_used(text: str, used: set[str], needs_body: bool) -> None:
    """The caller learns whether it must decode the body (args/kwargs) or extract the id."""
    compiled = compile_where(text)
    assert fields_used(compiled) == used
    assert compiled.needs_body is needs_body


# -- refused input -------------------------------------------------------------------------------
REFUSED = [
    ("__import__('os').system('x')", "function call"),
    ("open('f')", "function call"),
    ("(lambda: 1)()", "function call"),
    ("(lambda: 1) == 1", "lambda"),
    ("kwargs.get('a') == 1", "function call"),
    ("kwargs.x.y == 1", "attribute .y"),
    ("args.x == 1", "attribute .x"),
    ("'a'.upper == 1", "attribute .upper"),
    ("args[0] + 1 == 2", "arithmetic"),
    ("args[0] == 1 + 2j", "arithmetic"),
    ("[x for x in args]", "comprehension"),
    ("args[0] in [x for x in (1, 2)]", "comprehension"),
    ("1 < args[0] < 3", "chained comparisons"),
    ("args[-1] == 1", "non-negative integer"),
    ("args['a'] == 1", "non-negative integer"),
    ("args[True] == 1", "non-negative integer"),
    ("args[0:2] == []", "slice"),
    ("kwargs[0] == 1", "string literal"),
    ('f"{args}" == ""', "f-string"),
    ("kwargs.x", "not a condition"),
    ("True", "not a condition"),
    ("1", "not a condition"),
    ("-1", "not a condition"),
    ("('a', 'b')", "not a condition"),
    ("row_id", "not a condition"),
    ("not row_id", "not a condition"),
    ("args", "args needs an index"),
    ("kwargs == 1", "kwargs needs a key"),
    ("args[0] == 1 and kwargs.x", "not a condition"),
    ("x == 1", "unknown name 'x'"),
    ("kwargs.x == bob", "a string needs quotes"),
    ("args[0] is 1", "only allowed with None"),
    ("args[0] is not 'a'", "only allowed with None"),
    ("args[0] == kwargs.x", "not with another field"),
    ("args[0] in (kwargs.x,)", "not with another field"),
    ("1 == 2", "needs a field"),
    ("1 in args[0]", "write the field first"),
    ("None is args[0]", "write the field first"),
    ("(y := 1) == 1", "assignment expression"),
    ("args[0] == (y := 1)", "assignment expression"),
    ("args[0] == *x", "not a valid expression"),
    ("args[0] in (*x,)", "unpacking"),
    ("args[0] == (1 if args[1] else 2)", "conditional expression"),
    ("args[0] == {'a': 1}", "dict literal"),
    ("args[0] == b'x'", "a literal here must be"),
    ("args[0] == ...", "a literal here must be"),
    ("args[0] == 1j", "a literal here must be"),
    ("args[0] == ~1", "unary operator"),
    ("args[0] == -'a'", "a sign is only allowed before a number"),
    ("args[0] == [1]", "only allowed after in / not in"),
    ("args[0] in 'abc'", "needs a tuple, list or set"),
    ("args[0] in args[1]", "not with another field"),
    ("args[0] in ((1, 2),)", "containers inside containers"),
    ("args[0] < None", "needs a number or a string"),
    ("args[0] < (1, 2)", "only allowed after in / not in"),
    ("args[0] >= True", "needs a number or a string"),
    ("(args[0] == 1) == True", "comparison used as a value"),
    ("(args[0] == 1 or args[1] == 2) == True", "and / or used as a value"),
    ("args[0][1] == 1", "may be subscripted"),
    ("'abc'[0] == 'a'", "may be subscripted"),
    ("row_id == None", "use row_id is None"),
    ("row_id == 1.5", "compare it with a string or an integer"),
    ("row_id == True", "compare it with a string or an integer"),
    ("row_id in (1, 2.5)", "compare it with a string or an integer"),
    ("task_id == 3", "task_id is text"),
    ("task_name in ('a', 1)", "task_name is text"),
    ("task_name is None", "never None"),
    ("args[0] ==", "not a valid expression"),
    ("args[0] = 1", "not a valid expression"),
    ("args[0] == 1and args[1] == 2", "invalid decimal literal"),
    ('kwargs.x == "\\d"', "invalid escape sequence"),
    ("import os", "not a valid expression"),
    ("args[0] == 1; args[1] == 2", "not a valid expression"),
    ("", "empty expression"),
    ("   \n ", "empty expression"),
    ("args[0] == 1\0", "not a valid expression"),
    ("args[0] == 'x' " + "and args[0] == 'x' " * 110, "too long"),
    ("x" * 5000, "too long"),
    ("not " * 60 + "row_id is None", "nested too deeply"),
    ("-" * 1500 + "1 == args[0]", "nested too deeply"),
    ("args[0] in " + "[" * 60 + "]" * 60, "nested too deeply"),
    ("(" * 250 + "row_id is None" + ")" * 250, "not a valid expression"),
]


@pytest.mark.parametrize(("text", "words"), REFUSED)
def test_refused_input(text: str, words: str) -> None:
    """Everything off the whitelist raises WhereError (a ValueError) saying what and where."""
    with pytest.raises(WhereError) as caught:
        compile_where(text)
    assert isinstance(caught.value, ValueError)
    assert words in str(caught.value)


def test_enough_refusals_are_checked() -> None:
    assert len(REFUSED) >= 25


def test_a_refusal_names_the_column_and_the_culprit() -> None:
    """Columns are 1-based characters of the text as given (ast counts UTF-8 bytes)."""
    with pytest.raises(WhereError) as caught:
        compile_where("kwargs.a == 'é' and open('x') == 1")
    error = caught.value
    assert (error.line, error.column, error.near) == (1, 21, "open('x')")
    assert "at column 21: open('x')" in str(error)

    with pytest.raises(WhereError) as caught:
        compile_where("  \n  (kwargs.a == 1 and\n kwargs.b)")
    assert (caught.value.line, caught.value.column) == (3, 2)
    assert "line 3, column 2" in str(caught.value)

    with pytest.raises(WhereError) as caught:
        compile_where("   args[0] ==")
    assert caught.value.column == 14  # the end of the text


def test_nesting_within_the_limit_compiles() -> None:
    """The depth bound refuses hostile nesting, not real filters."""
    depth = MAX_DEPTH - 10
    compiled = compile_where("not (" * depth + "args[0] == 1" + ")" * depth)
    assert compiled.matches(msg(args=[1])) is (depth % 2 == 0)
    assert compile_where("args[0] == 'x'" + " or args[0] == 'x'" * 100).matches(msg(args=["x"]))
    assert len("x" * MAX_LENGTH) == MAX_LENGTH


# -- safety ----------------------------------------------------------------------------------------
def test_the_module_never_runs_code() -> None:
    """No eval, exec, compile or __import__ anywhere in the module; only stdlib imports."""
    source = Path(where_module.__file__).read_text()
    tree = ast.parse(source)
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert names.isdisjoint({"eval", "exec", "compile", "__import__", "open", "globals"})
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {
        "__future__",
        "ast",
        "collections",
        "dataclasses",
        "keyword",
        "math",
        "re",
        "typing",
        "warnings",
    }


TOKENS = [
    "args", "kwargs", "row_id", "task_id", "task_name", "x", "os", "[", "]", "(", ")", "{", "}",
    ".", ",", ":", "0", "1", "-1", "2.5", "1e999", "'a'", '"b"', "b'c'", "None", "True", "==",
    "!=", "<", "<=", ">", ">=", "in", "not", "is", "and", "or", "+", "*", "**", "~", ":=",
    "lambda", "if", "else", "for", "f'{x}'", "\\", "\n", "#", "...", "@", "__import__", ";",
]  # fmt: skip
SAMPLES = [
    msg(),
    msg(args=[1, "a", None, [1]], kwargs={"x": 1, "a": "b", "0": None}, row_id="42"),
    msg(args="oops", kwargs=["no"], row_id="3f2c"),
    msg(args=(True, 2.5), kwargs={"x": Hostile()}, row_id=""),
]


def compiles_or_refuses(text: str) -> None:
    """The property: WhereError or a Where whose matching answers a bool and whose text
    round-trips; never any other exception."""
    try:
        compiled = compile_where(text)
    except WhereError:
        return
    assert compile_where(compiled.text) == compiled
    for fields in SAMPLES:
        assert isinstance(compiled.matches(fields), bool)


def test_token_soup_compiles_or_is_refused() -> None:
    """Random token sequences (seeded, so a failure reproduces): the property holds, and
    enough of them compile for it to mean something."""
    rng = random.Random(20240607)
    compiled = 0
    for _ in range(4000):
        text = rng.choice(["", " "]).join(rng.choices(TOKENS, k=rng.randint(1, 12)))
        compiles_or_refuses(text)
        try:
            compile_where(text)
            compiled += 1
        except WhereError:
            pass
    assert compiled > 0


def random_condition(rng: random.Random, depth: int = 0) -> str:
    """A random expression the grammar accepts."""
    roll = rng.random()
    if depth < 4 and roll < 0.2:
        return f"not ({random_condition(rng, depth + 1)})"
    if depth < 4 and roll < 0.45:
        joiner = rng.choice([" and ", " or "])
        parts = [random_condition(rng, depth + 1) for _ in range(rng.randint(2, 3))]
        return "(" + joiner.join(parts) + ")"
    field = rng.choice(["args[0]", "args[3]", "kwargs.x", "kwargs['a']", "kwargs.zz", "row_id"])
    op = rng.choice(["==", "!=", "<", "<=", ">", ">=", "in", "not in", "is", "is not"])
    if op in ("is", "is not"):
        return f"{field} {op} None"
    scalars = ["1", "-2", "'a'", "'42'"] + ([] if field == "row_id" else ["None", "True", "2.5"])
    if op in ("in", "not in"):
        items = rng.choices(scalars, k=rng.randint(0, 3))
        return f"{field} {op} ({''.join(item + ', ' for item in items)})"
    literal = rng.choice([s for s in scalars if op in ("==", "!=") or s[0] in "'-1"])
    return f"{field} {op} {literal}"


def test_random_valid_expressions_compile_and_round_trip() -> None:
    """Expressions built from the grammar always compile, and their text compiles back."""
    rng = random.Random(7)
    for _ in range(1500):
        text = random_condition(rng)
        compiled = compile_where(text)
        assert compile_where(compiled.text) == compiled
        for fields in SAMPLES:
            assert isinstance(compiled.matches(fields), bool)


def test_arbitrary_text_compiles_or_is_refused() -> None:
    """The same property over hypothesis's text (skipped when hypothesis is not installed)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    text = st.one_of(
        st.text(max_size=300),
        st.lists(st.sampled_from(TOKENS), max_size=15).map(" ".join),
    )
    check = hypothesis.settings(max_examples=500, deadline=None)(
        hypothesis.given(text)(compiles_or_refuses)
    )
    check()
