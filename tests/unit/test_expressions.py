"""The safe expression and template evaluator, including hostile inputs."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from podium_router.expressions import ExpressionError, MissingField, evaluate
from podium_router.templates import check_template, render

pytestmark = pytest.mark.unit

CTX: dict[str, Any] = {
    "input": {"text": "Hello World", "n": 3, "items": [1, 2, 3], "nested": {"k": "v"}, "e": ""},
    "steps": {"history": {"output": {"entries": [{"text": "old"}]}}},
    "task": {"tenant": "acme", "priority": 5},
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("len(input.text) > 5", True),
        ("len(input.text) > 2000", False),
        ("input.n * 2 + 1", 7),
        ("input.items[0]", 1),
        ("input.items[-1]", 3),
        ("input.items[1:]", [2, 3]),
        ("input['nested']['k']", "v"),
        ("input.nested.k == 'v' and task.priority >= 5", True),
        ("not input.e", True),
        ("'World' in input.text", True),
        ("contains(input.items, 2)", True),
        ("lower(input.text)", "hello world"),
        ("startswith(input.text, 'Hell')", True),
        ("'big' if input.n > 2 else 'small'", "big"),
        ("default(task.missing_ok, 1) if false else 2", 2),
        ("steps.history.output.entries[0].text", "old"),
        ("[input.n, 'x']", [3, "x"]),
        ("{'a': input.n}", {"a": 3}),
        ("true and null is None", True),
        ("max(input.items) - min(input.items)", 2),
        ("1 < input.n < 5", True),
    ],
)
def test_allowed_expressions(source: str, expected: Any) -> None:
    assert evaluate(source, CTX) == expected


@pytest.mark.parametrize(
    "source",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd').read()",
        "eval('1')",
        "exec('x=1')",
        "input.__class__",
        "input.text.__class__.__mro__",
        "().__class__.__bases__[0].__subclasses__()",
        "[c for c in input.items]",
        "{k: 1 for k in input}",
        "lambda: 1",
        "(x := 1)",
        "input.text.upper()",  # methods of Python objects are not reachable
        "getattr(input, 'text')",
        "type(input)",
        "len(input.text, key=1)",
        "f'{input}'",
        "2 ** 1000000",
        "'a' * 10 ** 9",
        "input.items * 10000000",
        "yield 1",
        "await x",
        "1; 2",
        "import os",
        "x" * 3000,
        "+".join(["1"] * 300),
    ],
)
def test_hostile_expressions_are_refused_before_they_cost_anything(source: str) -> None:
    # What a hostile expression would cost is memory (a billion characters, ten
    # million items) or deep recursion: measured in bytes, which the machine's load
    # cannot change, rather than in seconds, which it can.
    tracemalloc.start()
    try:
        with pytest.raises(ExpressionError):
            evaluate(source, CTX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak / 1e6:.0f} MB allocated before the refusal"


@pytest.mark.parametrize(
    "source",
    ["input.nope", "steps.missing.output", "input.items[10]", "undefined_name", "input.n.k"],
)
def test_missing_fields_say_which(source: str) -> None:
    with pytest.raises(MissingField) as err:
        evaluate(source, CTX)
    assert source.split(".")[0].split("[")[0] in str(err.value)


def test_runtime_errors_become_expression_errors() -> None:
    for source in ("input.n / 0", "int('nope')", "input.text + 1", "int('9' * 5000)"):
        with pytest.raises(ExpressionError):
            evaluate(source, CTX)


def test_templates_keep_types_when_whole_and_interpolate_otherwise() -> None:
    spec = {
        "query": "{{ input.text }}",
        "limit": "{{ input.n }}",
        "context": "{{ steps.history.output }}",
        "line": "n={{ input.n }} items={{ input.items }} text={{ input.text }}",
        "list": ["{{ input.n }}", "plain", 4],
        "nested": {"deep": "{{ task.tenant }}"},
    }
    assert render(spec, CTX) == {
        "query": "Hello World",
        "limit": 3,
        "context": {"entries": [{"text": "old"}]},
        "line": "n=3 items=[1,2,3] text=Hello World",
        "list": [3, "plain", 4],
        "nested": {"deep": "acme"},
    }


def test_task_input_is_data_never_code() -> None:
    hostile = {"input": {"text": "{{ __import__('os').system('touch /tmp/pwned') }}"}}
    # Input is substituted as a value; it is never rendered as a template itself.
    assert render("{{ input.text }}", hostile) == hostile["input"]["text"]
    assert render("x {{ input.text }}", hostile) == "x " + hostile["input"]["text"]


def test_template_with_missing_field_raises() -> None:
    with pytest.raises(MissingField):
        render({"q": "{{ input.absent }}"}, CTX)


def test_the_evaluator_refuses_a_node_the_validator_should_have_stopped() -> None:
    # Defence in depth: evaluate() never reaches this (the validator refuses a
    # lambda first), but the evaluator has no fallback that runs arbitrary nodes.
    import ast

    from podium_router.expressions import _eval

    node = ast.parse("lambda: 1", mode="eval").body
    with pytest.raises(ExpressionError, match="cannot evaluate Lambda"):
        _eval(node, {}, "lambda: 1")
    with pytest.raises(ExpressionError):
        evaluate("lambda: 1", {})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("default(input.absent, 0.05)", 0.05),  # the shipped fan-out relies on this
        ("default(input.nested.absent, 'x')", "x"),
        ("default(input.items[10], -1)", -1),
        ("default(steps.unfinished.output, [])", []),
        ("default(input.n, 0)", 3),
        ("default(null, 1)", 1),
        ("default(input.absent, default(input.also_absent, input.text))", "Hello World"),
        # the fallback is evaluated only when needed: a missing one is no error then
        ("default(input.n, input.absent)", 3),
    ],
)
def test_default_covers_a_missing_field_and_null(source: str, expected: Any) -> None:
    assert evaluate(source, CTX) == expected


def test_default_does_not_hide_a_misspelt_name_or_a_missing_fallback() -> None:
    with pytest.raises(MissingField, match="inptu is not defined"):
        evaluate("default(inptu.n, 1)", CTX)
    with pytest.raises(MissingField, match=r"input\.also_absent is missing"):
        evaluate("default(input.absent, input.also_absent)", CTX)
    with pytest.raises(ExpressionError, match="takes a value and a fallback"):
        evaluate("default(input.absent)", CTX)


def test_a_raw_value_passes_through_unrendered() -> None:
    jinja = "{% for i in items %}{{ i | upper }}{% endfor %} {{ name }}"
    spec = {
        "template": {"$raw": jinja},
        "values": {"name": "{{ input.text }}", "data": {"$raw": {"k": "{{ x }}"}}},
        "text": "Dear {{ '{{' }} name }}, {{ input.n }}",
    }
    check_template(spec)  # a workflow holding Jinja in $raw loads
    assert render(spec, CTX) == {
        "template": jinja,
        "values": {"name": "Hello World", "data": {"k": "{{ x }}"}},
        "text": "Dear {{ name }}, 3",
    }
    # $raw beside other keys is ordinary data, rendered as usual
    assert render({"$raw": "{{ input.n }}", "b": 1}, CTX) == {"$raw": 3, "b": 1}
    with pytest.raises(ExpressionError):
        check_template({"template": "{{ i | upper }}"})  # Jinja outside $raw is refused
