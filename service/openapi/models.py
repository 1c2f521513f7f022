"""What the document says of each served model, built from its metadata: JSON Schemas of
one instance (an object keyed by feature name, and a row in feature order) and of its
prediction, and a ``/v1/models/<name>/predict`` operation typed with them.

The typed request, answer and operation are the generic ones of ``openapi.yaml`` with the
model's schemas in place, so what they share is written once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from service.formatting import format_number

SCHEMA_REF = "#/components/schemas/"
# Categories listed in a description or as examples; a longer list is cut.
SHOWN_CATEGORIES = 20


def ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMA_REF + name}


def model_metadata(model: Any) -> dict[str, Any]:
    """The metadata of a loaded model, or the dict itself."""
    metadata = getattr(model, "metadata", model)
    if not isinstance(metadata, Mapping):
        raise TypeError(f"expected a loaded model or its metadata, got {type(model).__name__}")
    return dict(metadata)


def number_text(value: Any) -> str:
    return format_number(value, 6)


def training_range(feature: Mapping[str, Any]) -> str | None:
    stats = feature.get("stats") or {}
    if "min" in stats and "max" in stats:
        return f"{number_text(stats['min'])} to {number_text(stats['max'])}"
    return None


def feature_schema(feature: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one feature's value, from its metadata entry."""
    dtype = feature["dtype"]
    notes = [str(feature["description"])] if feature.get("description") else []
    schema: dict[str, Any]
    if dtype == "category":
        categories = list(feature.get("categories", ()))
        text = bool(categories) and all(isinstance(c, str) for c in categories)
        kind = "string" if text or not categories else "integer"
        if feature.get("unknown_category", "reject") == "reject":
            allowed = list(categories)
            fill = feature.get("fill_value")
            if fill is not None and fill not in allowed:
                allowed.append(fill)
            schema = {"type": kind, "enum": allowed}
            notes.append("Categories not seen in training are refused (422).")
        else:
            shown = categories[:SHOWN_CATEGORIES]
            schema = {"type": kind, "examples": shown}
            more = " ..." if len(categories) > SHOWN_CATEGORIES else ""
            notes.append(
                f"Training categories: {', '.join(map(str, shown))}{more}; others are accepted "
                f"({feature.get('handle_unknown', 'ignore')})."
            )
        if text:
            notes.append("A number sent for a category means the category with that text.")
    else:
        schema = {"type": "integer" if dtype == "int64" else "number"}
        stats = feature.get("stats") or {}
        if training_range(feature):
            mean = f" (mean {number_text(stats['mean'])})" if "mean" in stats else ""
            notes.append(
                f"Training range {training_range(feature)}{mean}; documentation, not a limit."
            )
    if feature.get("missing", "reject") == "allow":
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        notes.append("null (missing) is allowed and imputed.")
    else:
        notes.append("Missing values are refused.")
    schema["description"] = f"{dtype}. " + " ".join(notes)
    return schema


def instance_schema(metadata: Mapping[str, Any]) -> dict[str, Any]:
    features = metadata["input"]["features"]
    return {
        "title": f"{metadata['name']} instance",
        "description": f"One instance for {metadata['name']}, keyed by feature name.",
        "type": "object",
        "required": [f["name"] for f in features],
        "additionalProperties": False,
        "properties": {f["name"]: feature_schema(f) for f in features},
    }


def row_schema(metadata: Mapping[str, Any]) -> dict[str, Any]:
    features = metadata["input"]["features"]
    return {
        "title": f"{metadata['name']} row",
        "description": "One instance as values in feature order: "
        + ", ".join(f["name"] for f in features)
        + ".",
        "type": "array",
        "prefixItems": [feature_schema(f) for f in features],
        "items": False,
        "minItems": len(features),
        "maxItems": len(features),
    }


def prediction_schema(
    metadata: Mapping[str, Any], has_proba: bool, generic: Mapping[str, Any]
) -> dict[str, Any]:
    """The generic prediction answer, with this model's name, labels and classes."""
    classes = metadata.get("classes")
    if metadata.get("task") == "classification" and classes:
        label: dict[str, Any] = {"enum": list(classes)}
    else:
        label = {"type": "number"}
    properties = copy.deepcopy(dict(generic["properties"]))
    properties.update(
        model={"const": metadata["name"]},
        version={"type": "integer", "minimum": 1},
        predictions={"type": "array", "items": label},
    )
    del properties["probabilities"], properties["classes"]
    required = list(generic["required"])
    if has_proba and classes:
        width = len(classes)
        properties["probabilities"] = {
            "description": "One list per instance, in the order of `classes`.",
            "type": "array",
            "items": {
                "type": "array",
                "items": {"type": "number", "minimum": 0, "maximum": 1},
                "minItems": width,
                "maxItems": width,
            },
        }
        properties["classes"] = {"const": list(classes)}
        at = required.index("backend")  # as in the answer
        required[at:at] = ["probabilities", "classes"]
    return {
        "title": f"{metadata['name']} prediction",
        "type": "object",
        "required": required,
        "properties": properties,
    }


def example_instance(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A valid instance: the golden example when recorded, else typical training values."""
    features = metadata["input"]["features"]
    golden = (metadata.get("golden") or {}).get("instances") or []
    if golden and len(golden[0]) == len(features):
        return {f["name"]: v for f, v in zip(features, golden[0], strict=True)}
    instance: dict[str, Any] = {}
    for feature in features:
        mean = float((feature.get("stats") or {}).get("mean", 0.0))
        if feature["dtype"] == "category":
            value = (feature.get("categories") or [feature.get("fill_value")])[0]
        else:
            value = round(mean) if feature["dtype"] == "int64" else round(mean, 4)
        instance[feature["name"]] = value
    return instance


def schema_names(name: str) -> dict[str, str]:
    """The component names of one model's schemas."""
    return {
        "instance": f"{name}.Instance",
        "row": f"{name}.Row",
        "request": f"{name}.PredictRequest",
        "response": f"{name}.PredictResponse",
    }


def model_parts(
    model: Any,
    generic_operation: Mapping[str, Any],
    schemas: Mapping[str, Any],
    max_instances: int | None,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One model's typed predict path, its operation and its component schemas, from the
    generic predict operation and the generic request and answer schemas."""
    metadata = model_metadata(model)
    name = metadata["name"]
    names = schema_names(name)
    request = {"title": f"{name} predict request", **copy.deepcopy(schemas["PredictRequest"])}
    instances = request["properties"]["instances"]
    instances["oneOf"] = [
        {"type": "array", "items": ref(names["instance"])},
        {"type": "array", "items": ref(names["row"])},
    ]
    if max_instances:
        instances["maxItems"] = max_instances
    has_proba = getattr(model, "has_proba", metadata.get("task") == "classification")
    own_schemas = {
        names["instance"]: instance_schema(metadata),
        names["row"]: row_schema(metadata),
        names["request"]: request,
        names["response"]: prediction_schema(metadata, bool(has_proba), schemas["PredictResponse"]),
    }
    generic_path = "/v1/models/{model_ref}/predict"
    operation = copy.deepcopy(dict(generic_operation))
    operation.update(
        operationId=f"predict_{name.replace('-', '_')}",
        summary=f"Predict with {name} (version {metadata['version']}, "
        f"{metadata.get('task', 'model')})",
        description=(metadata.get("description") or "").strip()
        + f"\n\nServed by the default alias; `{name}@<version>` or `{name}@<alias>` on "
        f"`{generic_path}` may take other features (see `/v1/models/{name}/versions/<version>`).",
    )
    operation["parameters"] = [p for p in operation.get("parameters", ()) if p["in"] != "path"]
    operation["requestBody"]["content"]["application/json"] = {
        "schema": ref(names["request"]),
        "example": {"instances": [example_instance(metadata)]},
    }
    answer = operation["responses"]["200"]["content"]["application/json"]
    answer["schema"] = ref(names["response"])
    return f"/v1/models/{name}/predict", {"post": operation}, own_schemas
