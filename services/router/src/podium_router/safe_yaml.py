"""Bounded YAML: PyYAML's SafeLoader with limits on size, nesting and aliases.

SafeLoader builds no Python objects beyond plain data, but on its own it lets
three kinds of file through to crash or stall whoever loads them:

- a tag on a scalar that does not fit it (``!!int yw``, ``!!timestamp junk``)
  raises the converter's own ValueError or AttributeError, not a YAMLError;
- nesting a few thousand levels deep exhausts the composer's recursion;
- aliases multiply: nine anchors of nine aliases each (a "billion laughs")
  is a 1 KB file that stands for 10⁹ nodes. PyYAML shares the aliased objects,
  so loading is quick, but everything that walks the data (line numbers for
  error messages, template checks, validation) walks all 10⁹.

No maintained Python library bounds these for PyYAML (strictyaml refuses flow
style, which our workflows use), so this loader adds the bounds itself: the
file's size before parsing, the depth while composing, and the depth and node
count *after* alias expansion, counted on the node graph (each shared node
once) before anything is constructed. Every refusal is a ``yaml.YAMLError``
with the position it concerns.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

MAX_BYTES = 1_048_576
MAX_DEPTH = 64  # a workflow needs about ten levels
MAX_NODES = 100_000  # after alias expansion; a large workflow has a few thousand


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting while composing, and reports a
    scalar its tag cannot convert as a ConstructorError."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        # What SafeConstructor's converters raise on a value their tag does not fit
        # (int('yw'), a failed timestamp match, float overflow).
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise ConstructorError(
                None, None, f"{node.value!r} is not a valid {node.tag}", node.start_mark
            ) from exc


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a graph that, with every alias expanded, is too deep or too large."""
    # id(node) -> (nodes, height) of its expansion; each shared node is counted once.
    seen: dict[int, tuple[int, int]] = {}
    open_: set[int] = set()

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in seen:
            nodes, height = seen[key]
        else:
            if key in open_:
                raise ComposerError(
                    None, None, "an alias refers to the node that contains it", node.start_mark
                )
            if depth > MAX_DEPTH:
                raise ComposerError(
                    None, None, f"aliases nest deeper than {MAX_DEPTH} levels", node.start_mark
                )
            open_.add(key)
            children: list[yaml.Node] = []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            nodes, height = 1, 1
            for child in children:
                n, h = visit(child, depth + 1)
                nodes, height = nodes + n, max(height, h + 1)
                if nodes > MAX_NODES:
                    raise ComposerError(
                        None,
                        None,
                        f"aliases expand to more than {MAX_NODES} nodes",
                        node.start_mark,
                    )
            open_.discard(key)
            seen[key] = (nodes, height)
        if depth + height - 1 > MAX_DEPTH:
            raise ComposerError(
                None, None, f"aliases nest deeper than {MAX_DEPTH} levels", node.start_mark
            )
        return nodes, height

    visit(root, 1)


def load(text: str) -> tuple[yaml.Node | None, Any]:
    """The single document in ``text``: its node graph (for line numbers) and its data.

    Raises ``yaml.YAMLError`` for anything malformed or over the bounds."""
    if len(text) > MAX_BYTES:
        raise yaml.YAMLError(f"longer than {MAX_BYTES} characters")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node)
        return node, loader.construct_document(node)
    finally:
        loader.dispose()
