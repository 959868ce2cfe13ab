"""Is a new JSON Schema of a contract compatible with the previous one?

A contract version is read and written by services deployed at different
times, so a change must keep both directions working: new readers accept old
messages, and old readers accept new ones. That leaves additive changes only.
:func:`breaking_changes` reports, with a JSON path each, what breaks that rule:

- a field removed (required or not: an old reader may rely on it);
- a new required field (one without a default: old writers do not send it);
- a field that was optional and is now required;
- a type changed, including ``null`` added or removed and the format of a
  string (``date-time``);
- the allowed values of an enum or const changed;
- an object that now forbids unknown fields (``additionalProperties: false``);
- a different ``x-ce-type``.

A required field that becomes optional is allowed: podium's encoder writes
every field, defaults included, so old readers still find it. Constraints
(``maxLength``, ``minimum`` ...) are not compared; tightening one is breaking
too, so review those by hand.

Nested objects (``$ref`` into ``$defs``), unions and array items are followed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Schema = Mapping[str, Any]

_NO_ENUM = None


def breaking_changes(old_schema: Schema, new_schema: Schema) -> list[str]:
    """What in ``new_schema`` breaks readers or writers of ``old_schema``; empty if nothing."""
    problems: list[str] = []
    old_type, new_type = old_schema.get("x-ce-type"), new_schema.get("x-ce-type")
    if old_type != new_type:
        problems.append(f"x-ce-type changed from {old_type!r} to {new_type!r}")
    _Walker(old_schema, new_schema, problems).compare(old_schema, new_schema, "", frozenset())
    return problems


class _Walker:
    def __init__(self, old_root: Schema, new_root: Schema, out: list[str]) -> None:
        self.old_root = old_root
        self.new_root = new_root
        self.out = out

    def report(self, path: str, what: str) -> None:
        self.out.append(f"{path or '<root>'}: {what}")

    def compare(
        self, old: Schema, new: Schema, path: str, seen: frozenset[tuple[str, str]]
    ) -> None:
        # Recursive models refer to themselves; stop when a pair of refs repeats.
        pair = (str(old.get("$ref", "")), str(new.get("$ref", "")))
        if pair != ("", ""):
            if pair in seen:
                return
            seen = seen | {pair}
        old_variants = _variants(old, self.old_root)
        new_variants = _variants(new, self.new_root)

        old_types, new_types = _types(old_variants), _types(new_variants)
        if old_types != new_types:
            self.report(path, f"type changed from {_show(old_types)} to {_show(new_types)}")
            return

        old_enum, new_enum = _enum(old_variants), _enum(new_variants)
        if old_enum != new_enum:
            self.report(path, _enum_change(old_enum, new_enum))

        old_obj, new_obj = _only(old_variants, "object"), _only(new_variants, "object")
        if old_obj is not None and new_obj is not None:
            self.compare_object(old_obj, new_obj, path, seen)

        old_arr, new_arr = _only(old_variants, "array"), _only(new_variants, "array")
        if old_arr is not None and new_arr is not None:
            self.compare(old_arr.get("items", {}), new_arr.get("items", {}), f"{path}[]", seen)

    def compare_object(
        self, old: Schema, new: Schema, path: str, seen: frozenset[tuple[str, str]]
    ) -> None:
        old_props: Mapping[str, Any] = old.get("properties", {})
        new_props: Mapping[str, Any] = new.get("properties", {})
        old_req = set(old.get("required", ()))
        new_req = set(new.get("required", ()))
        prefix = f"{path}." if path else ""
        for name, old_prop in old_props.items():
            where = prefix + name
            if name not in new_props:
                kind = "required field" if name in old_req else "field"
                self.report(where, f"{kind} removed")
                continue
            if name in new_req and name not in old_req:
                self.report(where, "optional field became required")
            self.compare(old_prop, new_props[name], where, seen)
        for name in new_props.keys() - old_props.keys():
            if name in new_req:
                self.report(prefix + name, "new required field (give it a default)")
        newly_closed = new.get("additionalProperties") is False
        if newly_closed and old.get("additionalProperties") is not False:
            self.report(path, "now forbids unknown fields (additionalProperties: false)")


def _resolve(schema: Schema, root: Schema) -> Schema:
    """Follow local ``$ref``s; keywords beside a ``$ref`` win over the target's."""
    hops = 0
    while "$ref" in schema and hops < 32:
        ref = str(schema["$ref"])
        if not ref.startswith("#/"):
            return schema  # an external reference: compared as written
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        hops += 1
    return schema


def _variants(schema: Schema, root: Schema) -> list[Schema]:
    """The alternatives of a schema: its ``anyOf``/``oneOf`` members, flattened."""
    schema = _resolve(schema, root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return [v for member in schema[key] for v in _variants(member, root)]
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return [{**v, **rest} for v in _variants(all_of[0], root)]
    return [schema]


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def _types(variants: list[Schema]) -> frozenset[str]:
    names: set[str] = set()
    for v in variants:
        declared = v.get("type")
        if declared is None and "const" in v:
            declared = _JSON_TYPES.get(type(v["const"]), "any")
        if declared is None and "enum" in v:
            declared = sorted({_JSON_TYPES.get(type(x), "any") for x in v["enum"]})
        if declared is None:
            names.add("any")
            continue
        for t in declared if isinstance(declared, list) else [declared]:
            fmt = v.get("format")
            names.add(f"{t}({fmt})" if t == "string" and fmt else str(t))
    return frozenset(names)


def _enum(variants: list[Schema]) -> frozenset[Any] | None:
    """The allowed values when every non-null alternative lists them; else None."""
    values: set[Any] = set()
    for v in variants:
        if v.get("type") == "null":
            continue
        if "const" in v:
            values.add(_hashable(v["const"]))
        elif "enum" in v:
            values.update(_hashable(x) for x in v["enum"])
        else:
            return _NO_ENUM
    return frozenset(values) if values else _NO_ENUM


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, dict | list) else value


def _enum_change(old: frozenset[Any] | None, new: frozenset[Any] | None) -> str:
    if old is None:
        return f"values now restricted to {sorted(map(repr, new or ()))}"
    if new is None:
        return f"values no longer restricted to {sorted(map(repr, old))}"
    parts = []
    if old - new:
        parts.append(f"removed {sorted(map(repr, old - new))}")
    if new - old:
        parts.append(f"added {sorted(map(repr, new - old))}")
    return "allowed values changed: " + ", ".join(parts)


def _only(variants: list[Schema], json_type: str) -> Schema | None:
    found = [v for v in variants if v.get("type") == json_type]
    return found[0] if len(found) == 1 else None


def _show(types: frozenset[str]) -> str:
    return "|".join(sorted(types)) or "nothing"
