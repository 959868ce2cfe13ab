"""The bounded YAML loader: tags that do not fit, deep nesting, alias bombs, size."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import yaml

from podium_router import safe_yaml
from podium_router.workflows import WorkflowError, load_file

GOOD = "name: ok\nsteps:\n  - {id: a, uses: echo}\n"


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """``width ** levels`` strings once every alias is expanded, in a few hundred bytes."""
    lines = [GOOD, 'lol0: &l0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return GOOD + "output: " + "[" * depth + "]" * depth + "\n"


def test_plain_data_loads_with_its_node_graph() -> None:
    node, data = safe_yaml.load(GOOD + "output: {x: [1, 2.5, true, null, '2026-01-01']}\n")
    assert data["output"] == {"x": [1, 2.5, True, None, "2026-01-01"]}
    assert isinstance(node, yaml.MappingNode)
    assert safe_yaml.load("") == (None, None)


def test_aliases_within_the_bounds_still_work() -> None:
    _, data = safe_yaml.load("base: &b {pool: fast}\none: *b\ntwo: {<<: *b, model: m}\n")
    assert data["one"] == {"pool": "fast"} and data["two"] == {"pool": "fast", "model": "m"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("version: !!int yw\n", "'yw' is not a valid tag:yaml.org,2002:int"),
        ("when: !!timestamp junk\n", "'junk' is not a valid tag:yaml.org,2002:timestamp"),
        ("n: !!float 1e999999x\n", "not a valid tag:yaml.org,2002:float"),
        ("n: !!int " + "9" * 5000 + "\n", "not a valid tag:yaml.org,2002:int"),
        ("x: !!binary é\n", "failed to convert base64 data into ascii"),
        ("x: !!python/name:os.system\n", "could not determine a constructor"),
    ],
)
def test_a_tag_that_does_not_fit_its_value_is_a_yaml_error(text: str, problem: str) -> None:
    with pytest.raises(yaml.YAMLError) as err:
        safe_yaml.load(text)
    assert problem in str(err.value)


def test_nesting_deeper_than_the_bound_is_refused_while_composing() -> None:
    safe_yaml.load(nested(safe_yaml.MAX_DEPTH - 5))
    with pytest.raises(yaml.YAMLError, match=f"nested deeper than {safe_yaml.MAX_DEPTH}"):
        safe_yaml.load(nested(3000))


def test_a_billion_laughs_is_refused_at_once() -> None:
    # "At once": before anything is expanded, which would take gigabytes. Measured in
    # bytes, which the machine's load cannot change, rather than in seconds.
    tracemalloc.start()
    try:
        with pytest.raises(yaml.YAMLError, match=f"more than {safe_yaml.MAX_NODES} nodes"):
            safe_yaml.load(billion_laughs())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak / 1e6:.0f} MB allocated before the refusal"
    safe_yaml.load(billion_laughs(levels=3, width=9))  # 729 strings: fine


def test_aliases_that_add_up_to_too_deep_a_structure_are_refused() -> None:
    # Each anchor is 40 levels deep and wraps the one before: fine one by one, 200 together.
    lines = ["a0: &a0 x"]
    for i in range(1, 6):
        lines.append(f"a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40)
    with pytest.raises(yaml.YAMLError, match="aliases nest deeper than"):
        safe_yaml.load("\n".join(lines) + "\n")


def test_an_alias_to_the_node_that_contains_it_is_refused() -> None:
    with pytest.raises(yaml.YAMLError, match="refers to the node that contains it"):
        safe_yaml.load("loop: &a [1, *a]\n")


def test_text_over_the_size_bound_is_refused_before_parsing() -> None:
    with pytest.raises(yaml.YAMLError, match="longer than"):
        safe_yaml.load("x: " + "a" * safe_yaml.MAX_BYTES)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("name: a\nversion: !!int yw\nsteps: []\n", ":2: not valid YAML"),
        ("name: a\nsteps:\n  - id: !!timestamp junk\n", ":3: not valid YAML"),
        (nested(3000), ":4: not valid YAML"),
        (billion_laughs(), "more than 100000 nodes"),
    ],
)
def test_load_file_turns_every_yaml_problem_into_a_workflow_error(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(WorkflowError) as err:
        load_file(path)
    assert str(path) in str(err.value) and says in str(err.value)


def test_load_file_refuses_a_huge_or_binary_file(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (safe_yaml.MAX_BYTES + 1))
    with pytest.raises(WorkflowError, match="larger than"):
        load_file(huge)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(WorkflowError, match="not UTF-8"):
        load_file(binary)
