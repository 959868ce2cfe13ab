"""Safe expressions over task and step data, for `when` rules and templates.

The language is a small subset of Python expressions, checked node by node
against a whitelist before anything is evaluated: literals, names bound in the
context (``input``, ``steps``, ``task``), ``.field`` and ``[index]`` lookups on
JSON data, comparisons, ``and``/``or``/``not``, arithmetic, ``in``, the ternary
``a if c else b``, and calls to a few pure functions (``len``, ``lower``,
``upper``, ``str``, ``int``, ``float``, ``bool``, ``contains``, ``startswith``,
``endswith``, ``min``, ``max``, ``abs``, ``round``, ``default``).

There is no attribute access on Python objects (``.field`` reads a mapping key),
no comprehension, lambda, assignment or import, and every value an expression
builds is bounded (in bytes of JSON) before it is built, so task input can never
execute code or exhaust the router. Only JSON data can come out: literals are
strings, numbers, true/false/null, and object keys are strings.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import orjson

MAX_SOURCE = 2_000
MAX_NODES = 200
MAX_RESULT = 1_000_000  # bytes of JSON a single operation may produce


class ExpressionError(ValueError):
    """An expression that is not allowed, or that failed on this data.

    A ValueError, so pydantic reports it against the field that holds it."""


class ResultTooLarge(ExpressionError):
    """A value over the size bound: the task fails ``too_large``, as it would had the
    value been built and then measured against the message limits (limits.md)."""


class MissingField(ExpressionError):
    """The expression names data the task does not have."""


class UnknownName(MissingField):
    """A top-level name that no context binds: a typo, which ``default()`` does not hide."""


_MISSING = object()


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _len(value: Any) -> int:
    if isinstance(value, str | list | dict | tuple):
        return len(value)
    raise ExpressionError(f"len() of {type(value).__name__}")


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": _len,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "contains": lambda container, item: item in container,
    "startswith": lambda s, prefix: str(s).startswith(prefix),
    "endswith": lambda s, suffix: str(s).endswith(suffix),
    "default": _default,
}

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: lambda a, b: a is b,
    ast.IsNot: lambda a, b: a is not b,
}
_ALLOWED = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Attribute,
    ast.Subscript,
    ast.Compare,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.IfExp,
    ast.Call,
    ast.List,
    ast.Tuple,
    ast.Dict,
    ast.Slice,
    *_BINOPS,
    *_CMPOPS,
)
# Literals that can end up in a step's JSON input: bytes, complex numbers and ``...``
# parse as constants too, but could only fail later, when the step is sent.
_JSON_CONSTANTS = (str, int, float, type(None))
_PRINTF = "`%` on a string is printf formatting, which is not allowed; build strings with +"


def _refuse_at_load(node: ast.AST, source: str) -> None:
    """Raise ExpressionError for an allowed node type used in a way that cannot work."""
    if isinstance(node, ast.Constant) and not isinstance(node.value, _JSON_CONSTANTS):
        raise ExpressionError(
            f"{ast.unparse(node)} is not allowed in {source!r}: "
            "literals are strings, numbers, true, false and null"
        )
    if isinstance(node, ast.Dict) and not all(
        isinstance(k, ast.expr)
        and not (isinstance(k, ast.Constant) and not isinstance(k.value, str))
        for k in node.keys
    ):
        raise ExpressionError(f"object keys must be strings, without ** (in {source!r})")
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Mod)
        and isinstance(node.left, ast.Constant)
        and isinstance(node.left.value, str)
    ):
        raise ExpressionError(f"{_PRINTF} (in {source!r})")


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> ast.Expression:
    """Parse and check an expression once; raises ExpressionError if not allowed."""
    if len(source) > MAX_SOURCE:
        raise ExpressionError(f"expression longer than {MAX_SOURCE} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error in {source!r}: {exc.msg}") from exc
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ExpressionError(f"expression has more than {MAX_NODES} parts")
    for node in nodes:
        if not isinstance(node, _ALLOWED):
            raise ExpressionError(f"{type(node).__name__} is not allowed in {source!r}")
        if isinstance(node, ast.Call) and (
            not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords
        ):
            raise ExpressionError(f"only these functions may be called: {', '.join(FUNCTIONS)}")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ExpressionError(f"field {node.attr!r} is not allowed")
        _refuse_at_load(node, source)
    return tree


def evaluate(source: str, context: Mapping[str, Any]) -> Any:
    """Evaluate a checked expression against JSON-like data."""
    tree = compile_expression(source)
    try:
        return _eval(tree.body, context, source)
    except ExpressionError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, IndexError) as exc:
        raise ExpressionError(f"{source!r} failed: {exc}") from exc


def _lookup(container: Any, key: Any, source: str, path: str) -> Any:
    if isinstance(container, Mapping):
        if key in container:
            return container[key]
        raise MissingField(f"{path} is missing (in {source!r})")
    if isinstance(container, list | str) and isinstance(key, int):
        try:
            return container[key]
        except IndexError:
            raise MissingField(f"{path} is out of range (in {source!r})") from None
    raise MissingField(f"{path}: cannot look up {key!r} in {type(container).__name__}")


def _path(node: ast.expr) -> str:
    return ast.unparse(node)


def size(value: Any) -> int:
    """Bytes of the value's JSON form: what it weighs in the message it ends up in.

    orjson measures it at C speed; every value an operation builds is checked
    against the bound, so a value measured here is never much over it."""
    if value is None or isinstance(value, bool | int | float):
        return 8  # a number never sets the size; a huge int fails where it is sent
    try:
        return len(orjson.dumps(value))
    except TypeError as exc:  # orjson.JSONEncodeError
        raise ExpressionError(f"result is not JSON: {exc}") from exc


def _bounded(value: Any) -> Any:
    if size(value) > MAX_RESULT:
        raise ResultTooLarge(f"result larger than {MAX_RESULT} bytes")
    return value


def _check_binop(op: ast.operator, a: Any, b: Any) -> None:
    """Refuse, before it is built, a result over the bound (and printf formatting,
    whose size a width like ``%0300000000d`` sets before anything can be checked)."""
    if isinstance(op, ast.Mod) and isinstance(a, str):
        raise ExpressionError(_PRINTF)
    projected = 0
    if isinstance(op, ast.Add) and isinstance(a, str | list) and isinstance(b, str | list):
        projected = size(a) + size(b)
    elif isinstance(op, ast.Mult):
        sequence, times = (a, b) if isinstance(a, str | list) else (b, a)
        if isinstance(sequence, str | list) and isinstance(times, int) and times > 1:
            # Quotes or brackets once; the content (and a comma per list copy) each time.
            inner = size(sequence) - 2 + (1 if isinstance(sequence, list) and sequence else 0)
            projected = inner * times + 2
    if projected > MAX_RESULT:
        raise ResultTooLarge(f"result larger than {MAX_RESULT} bytes")


def _bounded_parts(parts: list[Any]) -> None:
    """Refuse a list or object literal whose parts add up to more than the bound,
    before it is built: each part may be just under it, and a literal may hold many."""
    total = 0
    for part in parts:
        total += size(part) + 1
        if total > MAX_RESULT:
            raise ResultTooLarge(f"result larger than {MAX_RESULT} bytes")


def _eval(node: ast.expr, ctx: Mapping[str, Any], src: str) -> Any:
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name(id=name):
            if name in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[name]
            if name not in ctx:
                raise UnknownName(f"{name} is not defined (in {src!r})")
            return ctx[name]
        case ast.Attribute(value=inner, attr=attr):
            return _lookup(_eval(inner, ctx, src), attr, src, _path(node))
        case ast.Subscript(value=inner, slice=index):
            container = _eval(inner, ctx, src)
            if isinstance(index, ast.Slice):
                parts = [
                    None if p is None else _eval(p, ctx, src)
                    for p in (index.lower, index.upper, index.step)
                ]
                if not isinstance(container, list | str):
                    raise ExpressionError(f"cannot slice {type(container).__name__}")
                return container[slice(*parts)]
            return _lookup(container, _eval(index, ctx, src), src, _path(node))
        case ast.BoolOp(op=op, values=values):
            result: Any = isinstance(op, ast.And)
            for v in values:
                result = _eval(v, ctx, src)
                if isinstance(op, ast.And) != bool(result):
                    return result
            return result
        case ast.UnaryOp(op=op, operand=operand):
            value = _eval(operand, ctx, src)
            if isinstance(op, ast.Not):
                return not value
            return -value if isinstance(op, ast.USub) else +value
        case ast.BinOp(left=left, op=op, right=right):
            a, b = _eval(left, ctx, src), _eval(right, ctx, src)
            _check_binop(op, a, b)
            return _bounded(_BINOPS[type(op)](a, b))
        case ast.Compare(left=left, ops=ops, comparators=comparators):
            current = _eval(left, ctx, src)
            for cmp, comp in zip(ops, comparators, strict=True):
                right_value = _eval(comp, ctx, src)
                if not _CMPOPS[type(cmp)](current, right_value):
                    return False
                current = right_value
            return True
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _eval(body if _eval(test, ctx, src) else orelse, ctx, src)
        case ast.Call(func=ast.Name(id="default"), args=args):
            return _eval_default(args, ctx, src)
        case ast.Call(func=ast.Name(id=fname), args=args):
            return _bounded(FUNCTIONS[fname](*(_eval(a, ctx, src) for a in args)))
        case ast.List(elts=elts) | ast.Tuple(elts=elts):
            items = [_eval(e, ctx, src) for e in elts]
            _bounded_parts(items)
            return items
        case ast.Dict(keys=keys, values=values):
            pairs = [
                (None if k is None else _eval(k, ctx, src), _eval(v, ctx, src))
                for k, v in zip(keys, values, strict=True)
            ]
            for key, _ in pairs:
                if not isinstance(key, str):
                    raise ExpressionError(f"object key {key!r} is not a string (in {src!r})")
            _bounded_parts([part for pair in pairs for part in pair])
            return dict(pairs)
    # Only if the validator let through a node this evaluator has no case for.
    raise ExpressionError(f"cannot evaluate {type(node).__name__}")


def _eval_default(args: list[ast.expr], ctx: Mapping[str, Any], src: str) -> Any:
    """``default(value, fallback)``: the fallback when the value is null or a missing
    field (``default(input.seconds, 1)`` for input without ``seconds``). The fallback is
    evaluated only when needed, so defaults chain: ``default(input.a, default(input.b, 0))``."""
    if len(args) != 2:
        raise ExpressionError(f"default() takes a value and a fallback (in {src!r})")
    try:
        value = _eval(args[0], ctx, src)
    except UnknownName:
        raise
    except MissingField:
        value = None
    return value if value is not None else _eval(args[1], ctx, src)


def check(source: str) -> None:
    """Raise ExpressionError if the expression is not allowed (used at load time)."""
    compile_expression(source)
