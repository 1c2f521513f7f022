"""The OpenAPI document as one self-contained HTML page (``templates/docs.html``,
autoescaped, inline CSS only): every operation by tag, every served model's features with a
curl example, and every component, each ``$ref`` a link to its target on the page."""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

import jinja2
from markupsafe import Markup, escape

from service import pages
from service.openapi.models import (
    SCHEMA_REF,
    example_instance,
    model_metadata,
    schema_names,
    training_range,
)

METHOD_ORDER = ("get", "post", "put", "patch", "delete")
_REF_IN_JSON = re.compile(r'"#/components/(schemas|responses)/([A-Za-z0-9._-]+)"')


def anchor(kind: str, name: str) -> str:
    return f"{kind}-{re.sub(r'[^A-Za-z0-9_-]', '-', name)}"


def _pretty(value: Any) -> Markup:
    """Pretty JSON with every $ref a link to its component on the page."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    out: list[Any] = []
    last = 0
    for match in _REF_IN_JSON.finditer(text):
        out.append(escape(text[last : match.start()]))
        kind = "schema" if match.group(1) == "schemas" else "response"
        out.append(
            Markup('"<a href="#{}">{}</a>"').format(
                anchor(kind, match.group(2)), match.group(0).strip('"')
            )
        )
        last = match.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


def _feature_view(feature: Mapping[str, Any]) -> dict[str, Any]:
    categories = feature.get("categories")
    return {
        "name": feature["name"],
        "dtype": feature["dtype"],
        "categories": ", ".join(map(str, categories)) if categories else None,
        "unknown": feature.get("unknown_category") if feature["dtype"] == "category" else None,
        "missing": feature.get("missing", "reject"),
        "range": training_range(feature),
        "description": feature.get("description"),
    }


def curl_example(base_url: str, metadata: Mapping[str, Any]) -> str:
    body = json.dumps({"instances": [example_instance(metadata)]}, ensure_ascii=False)
    url = f"{base_url.rstrip('/')}/v1/models/{metadata['name']}/predict"
    return (
        f"curl -s -X POST {shlex.quote(url)} \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(body)}"
    )


def _operations_by_tag(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {t["name"]: [] for t in document.get("tags", [])}
    for path, item in document["paths"].items():
        for method in METHOD_ORDER:
            operation = item.get(method)
            if operation is None:
                continue
            body = operation.get("requestBody")
            groups.setdefault(operation["tags"][0], []).append(
                {
                    "id": anchor("op", operation["operationId"]),
                    "method": method.upper(),
                    "path": path,
                    "summary": operation.get("summary", ""),
                    "description": operation.get("description"),
                    "parameters": [
                        {
                            "name": p["name"],
                            "in": p["in"],
                            "required": p.get("required", False),
                            "schema": json.dumps(p.get("schema", {}), ensure_ascii=False),
                            "description": p.get("description", ""),
                        }
                        for p in operation.get("parameters", [])
                    ],
                    "body": _content((body or {}).get("content", {}), document),
                    "body_required": bool(body and body.get("required")),
                    "responses": [
                        _response_view(document, status, response)
                        for status, response in operation["responses"].items()
                    ],
                    "secured": bool(operation.get("security")),
                }
            )
    descriptions = {t["name"]: t.get("description", "") for t in document.get("tags", [])}
    return [
        {"name": tag, "description": descriptions.get(tag, ""), "operations": operations}
        for tag, operations in groups.items()
        if operations
    ]


def _inline(document: Mapping[str, Any], schema: Any, depth: int = 6) -> Any:
    """A schema with its component references replaced by the components (request
    bodies are small and not recursive; ``depth`` stops a recursive one)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMA_REF) and depth > 0:
            target = document["components"]["schemas"][ref[len(SCHEMA_REF) :]]
            return _inline(document, target, depth - 1)
        return {k: _inline(document, v, depth) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(document, v, depth) for v in schema]
    return schema


def _response_view(document: Mapping[str, Any], status: str, response: Mapping[str, Any]):
    """One answer of an operation: written out, or a link to a component response."""
    name = response["$ref"].rsplit("/", 1)[-1] if "$ref" in response else None
    return {
        "status": status,
        "description": (document["components"]["responses"][name] if name else response)[
            "description"
        ],
        "ref": anchor("response", name) if name else None,
        "ref_name": name,
        "content": [] if name else _content(response.get("content", {})),
    }


def _content(content: Mapping[str, Any], document: Mapping[str, Any] | None = None):
    """Each media type with its schema as linked JSON; with ``document``, the components
    it refers to inlined (a request body reads best whole)."""
    return [
        {
            "media": media,
            "schema": _pretty(
                _inline(document, spec.get("schema", {})) if document else spec.get("schema", {})
            ),
        }
        for media, spec in content.items()
    ]


def render_html(document: Mapping[str, Any], served: Iterable[Any], *, base_url: str) -> str:
    """The document as one self-contained HTML page."""
    models = []
    for model in sorted(served, key=lambda m: model_metadata(m)["name"]):
        metadata = model_metadata(model)
        models.append(
            {
                "name": metadata["name"],
                "version": metadata["version"],
                "task": metadata.get("task"),
                "description": metadata.get("description"),
                "classes": metadata.get("classes"),
                "features": [_feature_view(f) for f in metadata["input"]["features"]],
                "schemas": schema_names(metadata["name"]),
                "curl": curl_example(base_url, metadata),
            }
        )
    components = document["components"]
    return _template().render(
        info=document["info"],
        openapi=document["openapi"],
        groups=_operations_by_tag(document),
        models=models,
        schemas=[
            {"name": name, "id": anchor("schema", name), "json": _pretty(schema)}
            for name, schema in components["schemas"].items()
        ],
        responses=[
            {
                "name": name,
                "id": anchor("response", name),
                "description": response["description"],
                "content": _content(response.get("content", {})),
            }
            for name, response in components["responses"].items()
        ],
        anchor=anchor,
    )


@functools.cache
def _template() -> jinja2.Template:
    return pages.environment().get_template("docs.html")
