"""docs/reference/metadata.md from metadata.yaml's JSON Schema: every field with its type,
whether it is required (or when), and the schema's description of it; one table per
object, top level first."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from service.reference_docs.markdown import anchor, banner, cell, code
from service.store.metadata import METADATA_SCHEMA

_TYPE_NAMES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "object": "mapping",
    "array": "list",
    "null": "null",
}


@dataclasses.dataclass
class Table:
    path: str  # "" for the top level, else e.g. "input.features[]"
    description: str
    rows: list[tuple[str, str, str, str]]  # field, type, required, description


def tables(schema: dict[str, Any] = METADATA_SCHEMA) -> list[Table]:
    """One table per object of the schema that names its fields, depth first."""
    found: list[Table] = []
    _collect(schema, "", found)
    return found


def _collect(schema: dict[str, Any], path: str, found: list[Table]) -> None:
    table = Table(path=path, description=schema.get("description", ""), rows=[])
    found.append(table)
    required = set(schema.get("required", []))
    conditions = _conditional_requirements(schema)
    children = []
    for name, field in schema["properties"].items():
        where = f"{path}.{name}" if path else name
        if not field.get("description"):
            raise ValueError(
                f"metadata field {where} has no description: add one in its JSON Schema "
                "(service/store/metadata.py)"
            )
        nested = _nested_object(field)
        child_path = where + ("[]" if field.get("type") == "array" or "items" in field else "")
        shown = code(name)
        if nested is not None:
            shown = f"[{shown}](#{anchor(child_path)})"
            children.append((nested, child_path))
        if name in required:
            needed = "yes"
        elif name in conditions:
            needed = conditions[name]
        else:
            needed = "no"
        table.rows.append((shown, _type_text(field), needed, field["description"]))
    for nested, child_path in children:
        _collect(nested, child_path, found)


def _nested_object(field: dict[str, Any]) -> dict[str, Any] | None:
    """The object schema under ``field`` whose fields get a table of their own."""
    if "properties" in field:
        return field
    items = field.get("items")
    if isinstance(items, dict) and "properties" in items:
        return {**items, "description": items.get("description", "")}
    return None


def _conditional_requirements(schema: dict[str, Any]) -> dict[str, str]:
    """Field -> "when `x` is `v`" from the schema's if/then/else (also inside allOf)."""
    found: dict[str, str] = {}
    for branch in [schema, *schema.get("allOf", [])]:
        condition = branch.get("if", {}).get("properties", {})
        if len(condition) != 1:
            continue
        ((field, test),) = condition.items()
        if "const" not in test:
            continue
        value = code(json.dumps(test["const"]).strip('"'))
        for name in branch.get("then", {}).get("required", []):
            found[name] = f"when {code(field)} is {value}"
        for name in branch.get("else", {}).get("required", []):
            found[name] = f"when {code(field)} is not {value}"
    return found


def _type_text(field: dict[str, Any]) -> str:
    if "const" in field:
        return f"always {code(json.dumps(field['const']).strip(chr(34)))}"
    if "enum" in field:
        return "one of " + ", ".join(code(str(value)) for value in field["enum"])
    types = field.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if not types:
        return "any"
    names = []
    for kind in types:
        name = _TYPE_NAMES[kind]
        if kind == "array" and isinstance(field.get("items"), dict):
            items = field["items"]
            inner = "mappings" if "properties" in items else _plural(_type_text(items))
            name = f"list of {inner}"
        elif kind == "object" and isinstance(field.get("additionalProperties"), dict):
            name = f"mapping to {_plural(_type_text(field['additionalProperties']))}"
        names.append(name)
    text = " or ".join(names)
    limits = [
        f"{label} {field[key]}"
        for key, label in (
            ("minimum", "≥"),
            ("exclusiveMinimum", ">"),
            ("maximum", "≤"),
            ("minLength", "length ≥"),
            ("minItems", "items ≥"),
        )
        if key in field
    ]
    if "pattern" in field:
        limits.append(f"matching {code(field['pattern'])}")
    return f"{text} ({', '.join(limits)})" if limits else text


def _plural(text: str) -> str:
    return " or ".join(
        part if part.endswith("s") or " " in part else part + "s" for part in text.split(" or ")
    )


def render() -> str:
    found = tables()
    out = [
        "# `metadata.yaml`",
        "",
        banner("metadata.yaml's JSON Schema (METADATA_SCHEMA in service/store/metadata.py)"),
        "",
        f"Each version of a model in the store has a `metadata.yaml` next to its pickle. "
        f"{found[0].description}",
        "",
        "`modelctl train` writes the whole file; with `modelctl publish` you write it and "
        "the store fills in `name`, `version`, `created_at`, `artifact` and `environment`. "
        "A version whose file does not validate is refused, with the path of each bad "
        "field; fields the schema does not name are kept as they are. A nested field "
        "marked required is required when the mapping that holds it is there.",
    ]
    for table in found:
        title = "Top level" if not table.path else code(table.path)
        out += ["", f"## {title}"]
        if table.path and table.description:
            out += ["", table.description.replace("*", "\\*")]
        out += ["", "| Field | Type | Required | Description |", "|---|---|---|---|"]
        out += [
            f"| {cell(name)} | {cell(kind)} | {cell(needed)} | {cell(text)} |"
            for name, kind, needed, text in table.rows
        ]
    return "\n".join(out) + "\n"
