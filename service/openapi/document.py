"""The OpenAPI 3.1 document: the fixed part read from ``openapi.yaml``, completed with what
depends on this service as it runs (the scopes keys need, the served models). The YAML's
header says what of its conventions (``!fact``, the ``x-`` keys) is applied here."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import yaml

from service import errors
from service.monitoring import live
from service.openapi import models
from service.protocols import v2
from service.store import experiment_control, experiments, layout
from service.store.metadata import FEATURE_SCHEMA, METADATA_SCHEMA

FACTS: dict[str, Any] = {
    "NAME": layout.NAME_PATTERN.pattern,
    "VERSION": layout.VERSION_PATTERN.pattern,
    "ALIAS": layout.ALIAS_PATTERN.pattern,
    "KEY_HEADER": experiments.HEADER_PATTERN.pattern,
    "KEY_FIELD": experiments.FIELD_PATTERN.pattern,
    "EXPERIMENT_KINDS": list(experiments.KINDS),
    "TOTAL_WEIGHT": experiments.TOTAL_WEIGHT,
    "DEFAULT_ALPHA": experiments.DEFAULT_ALPHA,
    "DEFAULT_MIN_EFFECT": experiments.DEFAULT_MIN_EFFECT,
    "DEFAULT_SHADOW_SHARE": experiment_control.DEFAULT_SHADOW_SHARE,
    "MAX_REASON_CHARS": experiment_control.MAX_REASON_CHARS,
    "MAX_FEEDBACK_ITEMS": live.MAX_FEEDBACK_ITEMS,
    "V2_DATATYPES": list(v2.DATATYPES),
}
GENERIC_PREDICT = ("/v1/models/{model_ref}/predict", "post")
MODEL_NAME_PARAMETERS = frozenset({"name", "model_ref"})
_RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def path_template(rule: str) -> str:
    """A Werkzeug rule as an OpenAPI path: ``/a/<int:version>`` -> ``/a/{version}``."""
    return _RULE_VARIABLE.sub(r"{\1}", rule)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader, knowing ``!fact``."""


def _fact(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    whole = _PLACEHOLDER.fullmatch(text)
    return FACTS[whole[1]] if whole else text.format_map(FACTS)


_Loader.add_constructor("!fact", _fact)


@functools.cache
def _data() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("openapi.yaml").read_text(encoding="utf-8")
    data = yaml.load(text, Loader=_Loader)
    components = data["components"]
    components["responses"] = _failure_responses(data)
    schemas = components["schemas"]
    # The metadata as the store validates it, in OpenAPI's dialect.
    for name, source in (("Feature", FEATURE_SCHEMA), ("Metadata", METADATA_SCHEMA)):
        schemas[name] = {**_openapi_schema(source), **schemas[name]}
    features = schemas["Metadata"]["properties"]["input"]["properties"]["features"]
    features["items"] = models.ref("Feature")
    return data


def _openapi_schema(schema: Any) -> Any:
    """A JSON Schema as an OpenAPI schema: no ``$schema``, ECMA-262 regex anchors."""
    if isinstance(schema, dict):
        return {
            key: value.replace("\\Z", "$")
            if key == "pattern" and isinstance(value, str)
            else _openapi_schema(value)
            for key, value in schema.items()
            if key != "$schema"
        }
    if isinstance(schema, list):
        return [_openapi_schema(v) for v in schema]
    return schema


def _response(data: Mapping[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    every = data["x-every-response"]
    return {**response, "headers": {**every["headers"], **response.get("headers", {})}}


def _failure_responses(data: Mapping[str, Any]) -> dict[str, Any]:
    """Each kind of failure the service raises in each protocol's error shape (what Nginx
    answers itself has the native shape whatever the route: the alternative), then those
    only Nginx answers, in the native shape."""
    failures = data["x-failures"]
    service_kinds = {k: f for k, f in failures["kinds"].items() if "error" in f}
    edge_kinds = {k: f for k, f in failures["kinds"].items() if "error" not in f}
    responses = {}
    for prefix, own in failures["formats"].items():
        schema = {"oneOf": [models.ref(own), models.ref("Error")]} if prefix else models.ref(own)
        for kind, failure in service_kinds.items():
            responses[prefix + kind] = _error(data, failure["description"], schema)
    for kind, failure in edge_kinds.items():
        responses[kind] = _error(data, failure["description"], models.ref("Error"))
    return responses


def _error(data: Mapping[str, Any], description: str, schema: dict[str, Any]) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    return _response(data, {"description": description, "content": content})


@functools.cache
def statuses() -> dict[str, str]:
    """The HTTP status of each kind of failure, as the document's keys spell it."""
    return {
        kind: str(int(getattr(errors, f["error"]).status if "error" in f else f["status"]))
        for kind, f in _data()["x-failures"]["kinds"].items()
    }


def _complete(data: Mapping[str, Any], operation: dict[str, Any], scope: str | None) -> None:
    """Add what every operation has (the request id), and what it may answer whatever it
    does: the kinds of failure of its own ``x-errors``, and the usual ones by what it takes
    (a body, path parameters, a key granting ``scope``)."""
    failures = data["x-failures"]
    operation["parameters"] = [
        *operation.get("parameters", ()),
        *data["x-every-operation"]["parameters"],
    ]
    kinds = [*operation.pop("x-errors", ()), *failures["always"]]
    if "requestBody" in operation:
        kinds += failures["with-body"]
    if any(p["in"] == "path" for p in operation["parameters"]):
        kinds += failures["with-path-parameters"]
    if scope is not None:
        scheme = next(iter(data["components"]["securitySchemes"]))
        operation["security"] = [{scheme: [scope]}]
        kinds += failures["with-key"]
    prefix = failures["by-tag"].get(operation["tags"][0], "")
    responses = {
        status: response if "$ref" in response else _response(data, response)
        for status, response in operation["responses"].items()
    }
    for kind in kinds:
        name = prefix + kind if "error" in failures["kinds"][kind] else kind
        responses.setdefault(statuses()[kind], {"$ref": "#/components/responses/" + name})
    operation["responses"] = dict(sorted(responses.items()))


def _name_examples(paths: dict[str, Any], names: list[str]) -> None:
    """The served names as examples of every model name parameter: a client (or a fuzzer)
    finds something that exists."""
    if not names:
        return
    for item in paths.values():
        for operation in item.values():
            operation["parameters"] = [
                {**p, "schema": {**p["schema"], "examples": names}}
                if p["name"] in MODEL_NAME_PARAMETERS
                else p
                for p in operation["parameters"]
            ]


def build_document(
    served: Iterable[Any],
    *,
    version: str,
    max_instances: int | None = None,
    scopes: Mapping[tuple[str, str], str] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document: every route, plus typed paths for the served models
    (loaded models or their metadata, one per name). ``scopes`` gives, for each operation
    (path, lowercase method) that needs a key, the scope the key must grant; the others
    are open."""
    scopes = scopes or {}
    data = copy.deepcopy(_data())
    paths, schemas = data["paths"], data["components"]["schemas"]
    generic = copy.deepcopy(paths[GENERIC_PREDICT[0]][GENERIC_PREDICT[1]])
    for path, item in paths.items():
        for method, operation in item.items():
            _complete(data, operation, scopes.get((path, method)))
    names = []
    for model in sorted(served, key=lambda m: models.model_metadata(m)["name"]):
        name = models.model_metadata(model)["name"]
        if name in names:
            raise ValueError(f"{name} is listed twice; pass one model per name")
        names.append(name)
        path, item, model_schemas = models.model_parts(model, generic, schemas, max_instances)
        # A model's own predict path is the generic one with its name filled in.
        _complete(data, item["post"], scopes.get(GENERIC_PREDICT))
        paths[path] = item
        schemas.update(model_schemas)
    _name_examples(paths, names)
    info = data["info"]
    info["version"] = version
    info["description"] += " " + (", ".join(names) or "none") + "."
    published = ("openapi", "info", "tags", "paths", "components")
    return {key: data[key] for key in published}
