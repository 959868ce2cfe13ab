"""Templates in step inputs and workflow outputs: ``{{ expression }}``.

A string that is exactly one ``{{ … }}`` takes the expression's value as is
(an object stays an object); a string with text around placeholders is
interpolated, with non-string values written as JSON. Templates are applied
recursively through mappings and lists. Expressions are those of
:mod:`podium_router.expressions`.

Other languages use ``{{ }}`` too (the ``template`` capability's Jinja), so there are two
ways to pass braces through untouched: a mapping whose only key is ``$raw`` stands for its
value as written, never rendered (``{$raw: "Dear {{ name }}"}`` is the string
``"Dear {{ name }}"``), and inside text ``{{ '{{' }}`` writes a literal ``{{``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from podium_contracts import MAX_JSON_DEPTH, json_depth
from podium_router.expressions import ExpressionError, check, evaluate

RAW = "$raw"
# A result travels one level down inside a message, whose readers refuse a payload
# nested deeper than MAX_JSON_DEPTH.
MAX_RESULT_DEPTH = MAX_JSON_DEPTH - 1
PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
WHOLE = re.compile(r"^\s*\{\{(.*?)\}\}\s*$", re.DOTALL)


class TemplateError(ExpressionError):
    pass


def _json_text(value: Any) -> str:
    """A value as JSON text, or a TemplateError saying why it has none."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError as exc:  # an integer beyond 64 bits, too deep, ...
        raise TemplateError(f"result is not JSON: {exc}") from exc


def render_json(value: Any, context: Mapping[str, Any]) -> Any:
    """Render a template whose result goes into a message: it must be JSON that the
    codec can write, or the task fails with a template_error instead of the message."""
    result = render(value, context)
    if json_depth(result) > MAX_RESULT_DEPTH:
        raise TemplateError(f"result nested deeper than {MAX_RESULT_DEPTH} levels")
    _json_text(result)
    return result


def _raw(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and RAW in value


def render(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return _render_string(value, context)
    if _raw(value):
        return value[RAW]
    if isinstance(value, Mapping):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def _render_string(text: str, context: Mapping[str, Any]) -> Any:
    whole = WHOLE.match(text)
    if whole and "{{" not in whole.group(1):
        return evaluate(whole.group(1), context)

    def one(match: re.Match[str]) -> str:
        result = evaluate(match.group(1), context)
        return result if isinstance(result, str) else _json_text(result)

    return PLACEHOLDER.sub(one, text)


def check_template(value: Any) -> None:
    """Raise ExpressionError for any placeholder that is not an allowed expression."""
    if isinstance(value, str):
        for match in PLACEHOLDER.finditer(value):
            check(match.group(1))
    elif isinstance(value, Mapping) and not _raw(value):
        for v in value.values():
            check_template(v)
    elif isinstance(value, list):
        for v in value:
            check_template(v)
