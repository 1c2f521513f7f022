"""The OpenAPI 3.1 document of the HTTP API, and its HTML rendering.

``build_document(served, version=...)`` describes every route of the service:
the fixed routes (native, model reading, admin, Open Inference Protocol v2,
MLflow scoring, health, docs) with their request, response and error shapes,
plus, for each served model, component schemas of one instance (an object keyed
by feature name, and a list in feature order) and of its prediction, and a
concrete ``/v1/models/<name>/predict`` path whose body references them, so a
client generator gets typed inputs.

``render_html(document, served, base_url=...)`` renders the same document as a
self-contained page (``templates/docs.html``, autoescaped, inline CSS only).

Nothing here imports Flask: ``served`` is a list of loaded models (anything with
a ``metadata`` attribute) or of metadata dicts, one per model name.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

import jinja2
from markupsafe import Markup, escape

from service import pages
from service.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidInput,
    ModelNotReady,
    NotFound,
    ServiceError,
    TooManyInstances,
    Unauthorized,
    UnsupportedMediaType,
)
from service.monitoring import live
from service.store import experiment_control, experiments, layout
from service.store.metadata import FEATURE_SCHEMA, METADATA_SCHEMA

OPENAPI_VERSION = "3.1.0"
SCHEMA_REF = "#/components/schemas/"

TAGS = [
    {"name": "native", "description": "Predictions in the service's own JSON format."},
    {"name": "models", "description": "What is served: models, versions, metadata, model cards."},
    {"name": "admin", "description": "Promote, roll back, reload; needs the admin key."},
    {
        "name": "experiments",
        "description": "Split a model's requests between versions, with a shadow; needs the "
        "admin key.",
    },
    {"name": "v2", "description": "Open Inference Protocol v2 (KServe / Triton clients)."},
    {"name": "mlflow", "description": "MLflow scoring-server formats."},
    {"name": "health", "description": "Liveness and readiness for Nginx and orchestration."},
    {"name": "docs", "description": "This document, as JSON and as HTML."},
]

NAME_PATTERN = f"^{layout.NAME_PATTERN.pattern}$"
VERSION_OR_ALIAS = f"(?:{layout.VERSION_PATTERN.pattern}|{layout.ALIAS_PATTERN.pattern})"
REF_PATTERN = f"^{layout.NAME_PATTERN.pattern}(?:@{VERSION_OR_ALIAS})?$"
# A version number as the store writes it: 1 to 9 digits.
_VERSION_NUMBER = {"type": "integer", "minimum": 1, "maximum": 10**9 - 1}
REQUEST_ID_HEADER = "X-Request-ID"
BINARY_HEADER = "Inference-Header-Content-Length"
# What every prediction answer says served it (service.protocols.routing writes them),
# with their components; X-Model-Version is on every one, the others in an experiment.
SERVED_HEADERS = {
    "X-Model-Version": "ModelVersion",
    "X-Model-Variant": "ModelVariant",
    "X-Experiment-Id": "ExperimentId",
}


_RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")


def path_template(rule: str) -> str:
    """A Werkzeug rule as an OpenAPI path: ``/a/<int:version>`` -> ``/a/{version}``."""
    return _RULE_VARIABLE.sub(r"{\1}", rule)


def model_metadata(model: Any) -> dict[str, Any]:
    """The metadata of a loaded model, or the dict itself."""
    metadata = getattr(model, "metadata", model)
    if not isinstance(metadata, Mapping):
        raise TypeError(f"expected a loaded model or its metadata, got {type(model).__name__}")
    return dict(metadata)


def _has_proba(model: Any, metadata: Mapping[str, Any]) -> bool:
    return bool(getattr(model, "has_proba", metadata.get("task") == "classification"))


# --- small builders ------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMA_REF + name}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _response(description: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
    }
    if content is not None:
        response["content"] = content
    return response


def _prediction(description: str, content: dict[str, Any]) -> dict[str, Any]:
    """A prediction answer: with the headers naming the version (and variant) that served."""
    response = _response(description, content)
    for header, component in SERVED_HEADERS.items():
        response["headers"][header] = {"$ref": f"#/components/headers/{component}"}
    return response


def _error(description: str, schema: str = "Error") -> dict[str, Any]:
    return _response(description, _json(_ref(schema)))


def _path_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


P_NAME = _path_param("name", "A model name.", {"type": "string", "pattern": NAME_PATTERN})
P_MODEL_REF = _path_param(
    "model_ref",
    "A model name, optionally with `@<version>` or `@<alias>` (e.g. `iris-classifier@2`, "
    "`iris-classifier@staging`). The name alone means the default alias (`production`).",
    {"type": "string", "pattern": REF_PATTERN},
)
P_VERSION = _path_param("version", "A version number.", _VERSION_NUMBER)
P_V2_VERSION = _path_param(
    "version",
    "A version number or an alias (e.g. `2`, `staging`).",
    {"type": "string", "pattern": f"^{VERSION_OR_ALIAS}$"},
)
P_REQUEST_ID = {
    "name": REQUEST_ID_HEADER,
    "in": "header",
    "required": False,
    "description": "Your own request id: kept and echoed back when it is 1 to 128 of "
    "`A-Za-z0-9._:-`, else replaced by one the service makes (never refused).",
    "schema": {"type": "string"},
}


def _op(
    tag: str,
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    description: str | None = None,
    parameters: Iterable[dict[str, Any]] = (),
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"tags": [tag], "operationId": operation_id, "summary": summary}
    if description:
        operation["description"] = description
    operation["parameters"] = [*parameters, P_REQUEST_ID]
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = responses
    return operation


def _strip_schema_keys(schema: Any) -> Any:
    """A JSON Schema as an OpenAPI schema: no ``$schema``, ECMA-262 regex anchors."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "$schema":
                continue
            if key == "pattern" and isinstance(value, str):
                value = value.replace("\\Z", "$")
            out[key] = _strip_schema_keys(value)
        return out
    if isinstance(schema, list):
        return [_strip_schema_keys(v) for v in schema]
    return schema


# --- fixed component schemas ----------------------------------------------------


def _metadata_schemas() -> dict[str, Any]:
    feature = _strip_schema_keys(copy.deepcopy(FEATURE_SCHEMA))
    feature["title"] = "One input feature of a model (metadata.yaml input.features[])"
    metadata = _strip_schema_keys(copy.deepcopy(METADATA_SCHEMA))
    metadata["properties"]["input"]["properties"]["features"]["items"] = _ref("Feature")
    return {"Feature": feature, "Metadata": metadata}


_SCALAR = {"type": ["number", "string", "boolean", "null"]}
_ALIAS = {
    "type": "string",
    "pattern": f"^{layout.ALIAS_PATTERN.pattern}$",
    "default": "production",
}
_REASON = {"description": "Why, kept in the alias history (any JSON value is kept as text)."}
_CLASS_LABEL = {"type": ["string", "integer", "boolean"]}
_EXPERIMENT_VARIANT = {
    "type": "object",
    "description": "Only while the model runs an experiment and the request named no "
    "version or alias: the experiment and the variant (an alias or a version number, as "
    "the experiment was started) that served it.",
    "required": ["id", "variant"],
    "properties": {"id": {"type": "string"}, "variant": {"type": "string"}},
}
_BACKEND = {
    "enum": ["onnxruntime", "sklearn"],
    "description": "What computed the predictions: onnxruntime (the model's ONNX form, "
    "checked against the pickle at publish) or sklearn (the pickle).",
}


def _fixed_schemas() -> dict[str, Any]:
    nullable_int = {"type": ["integer", "null"]}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "request_id"],
                    "properties": {
                        "code": {"type": "string", "description": "Stable, machine-readable."},
                        "message": {"type": "string", "description": "For people."},
                        "details": {
                            "description": "What exactly was wrong; for `invalid_input`, "
                            "a list of problems naming the instance and feature.",
                        },
                        "request_id": {"type": "string"},
                    },
                }
            },
        },
        "InputProblem": {
            "type": "object",
            "required": ["instance", "feature", "problem"],
            "properties": {
                "instance": {"type": "integer", "minimum": 0},
                "feature": {"type": ["string", "null"]},
                "problem": {"type": "string"},
            },
        },
        "V2Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "MlflowError": {
            "type": "object",
            "required": ["error_code", "message"],
            "properties": {
                "error_code": {
                    "type": "string",
                    "description": "e.g. BAD_REQUEST, INVALID_PARAMETER_VALUE, "
                    "RESOURCE_DOES_NOT_EXIST, INTERNAL_ERROR",
                },
                "message": {"type": "string"},
            },
        },
        "Instance": {
            "type": "object",
            "description": "One instance keyed by feature name; see the per-model schemas.",
            "additionalProperties": _SCALAR,
        },
        "Row": {
            "type": "array",
            "description": "One instance as values in the model's feature order.",
            "items": _SCALAR,
        },
        "PredictRequest": {
            "type": "object",
            "required": ["instances"],
            "additionalProperties": False,
            "properties": {
                "instances": {
                    "minItems": 1,
                    "oneOf": [
                        {"type": "array", "items": _ref("Instance")},
                        {"type": "array", "items": _ref("Row")},
                    ],
                }
            },
        },
        "PredictResponse": {
            "type": "object",
            "required": ["model", "version", "predictions", "backend", "request_id"],
            "properties": {
                "model": {"type": "string"},
                "version": {"type": "integer"},
                "predictions": {
                    "type": "array",
                    "items": {"type": ["number", "string", "boolean"]},
                },
                "probabilities": {
                    "type": "array",
                    "description": "Classifiers with predict_proba: one list per instance, "
                    "in the order of `classes`.",
                    "items": {"type": "array", "items": {"type": "number"}},
                },
                "classes": {"type": "array", "items": _CLASS_LABEL},
                "backend": _BACKEND,
                "request_id": {"type": "string"},
                "experiment": _ref("ExperimentVariant"),
            },
        },
        "ExperimentVariant": _EXPERIMENT_VARIANT,
        "ModelSummary": {
            "type": "object",
            "required": ["name", "default_alias", "aliases", "versions"],
            "properties": {
                "name": {"type": "string"},
                "default_alias": {"type": "string"},
                "serving_version": nullable_int,
                "aliases": {"type": "object", "additionalProperties": {"type": "integer"}},
                "versions": {"type": "array", "items": {"type": "integer"}},
                "loaded_versions": {"type": "array", "items": {"type": "integer"}},
                "task": {"enum": ["classification", "regression", None]},
                "features": {"type": ["array", "null"], "items": {"type": "string"}},
                "classes": {"type": ["array", "null"], "items": _CLASS_LABEL},
                "backend": {
                    **_BACKEND,
                    "enum": [*_BACKEND["enum"], None],
                    "description": "What computes the serving version's predictions in this "
                    "worker (null: not loaded).",
                },
                "warnings": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
                "load_errors": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "VersionSummary": {
            "type": "object",
            "required": ["name", "version", "loaded"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "integer"},
                "created_at": {"type": ["string", "null"]},
                "description": {"type": ["string", "null"]},
                "algorithm": {"type": ["string", "null"]},
                "primary_metric": {"type": ["string", "null"]},
                "test_score": {"type": ["number", "null"]},
                "baseline_test_score": {"type": ["number", "null"]},
                "loaded": {"type": "boolean"},
                "backend": {
                    **_BACKEND,
                    "enum": [*_BACKEND["enum"], None],
                    "description": "What computes this version's predictions in this worker "
                    "(null: not loaded).",
                },
                "warnings": {"type": "array", "items": {"type": "string"}},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["models"],
            "properties": {"models": {"type": "array", "items": _ref("ModelSummary")}},
        },
        "VersionDetail": {
            "allOf": [
                _ref("VersionSummary"),
                {
                    "type": "object",
                    "required": ["metadata"],
                    "properties": {"metadata": _ref("Metadata")},
                },
            ]
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "models"],
            "properties": {
                "status": {"enum": ["ready", "not ready"]},
                "models": {"type": "object", "additionalProperties": _ref("ModelReadiness")},
            },
        },
        "ModelReadiness": {
            "type": "object",
            "required": ["alias", "version", "ready"],
            "properties": {
                "alias": {"type": "string"},
                "version": nullable_int,
                "ready": {"type": "boolean"},
                "wanted": {"type": "integer"},
                "error": {"type": "string"},
            },
        },
        "PromoteRequest": {
            "type": "object",
            "required": ["version"],
            "properties": {
                "version": _VERSION_NUMBER,
                "alias": _ALIAS,
                "reason": _REASON,
                "force": {
                    "type": "boolean",
                    "default": False,
                    "description": "Promote even when the promotion gate refuses.",
                },
            },
        },
        "RollbackRequest": {
            "type": "object",
            "properties": {"alias": _ALIAS, "reason": _REASON},
        },
        "AliasChange": {
            "type": "object",
            "required": ["model", "alias", "version", "previous"],
            "properties": {
                "model": {"type": "string"},
                "alias": {"type": "string"},
                "version": {"type": "integer"},
                "previous": nullable_int,
                "forced": {"type": "boolean", "description": "With force: the gate refused."},
                "gate": {"type": ["string", "null"], "description": "With force: its verdict."},
            },
        },
        "ReloadResult": {
            "type": "object",
            "required": ["ready", "models"],
            "properties": {
                "ready": {"type": "boolean"},
                "models": {"type": "object", "additionalProperties": _ref("ModelReadiness")},
            },
        },
        "MlflowReady": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ready"}},
        },
        "OpenAPIDocument": {
            "type": "object",
            "description": "This document (OpenAPI 3.1).",
            "required": ["openapi", "info", "paths"],
        },
    }
    # The detail of one model: the summary, with each version summarised instead of numbered.
    detail = copy.deepcopy(schemas["ModelSummary"])
    detail["properties"].update(
        versions={"type": "array", "items": _ref("VersionSummary")},
        alias_history={"type": "array", "items": {"type": "object"}},
        metadata={
            "description": "The metadata of the default alias's version, or null.",
            "oneOf": [_ref("Metadata"), {"type": "null"}],
        },
    )
    detail["required"] = [*detail["required"], "alias_history", "metadata"]
    schemas["ModelDetail"] = detail
    schemas.update(_metadata_schemas())
    schemas.update(_experiment_schemas())
    schemas.update(_experiment_report_schemas())
    schemas.update(_v2_schemas())
    schemas.update(_mlflow_schemas())
    return schemas


V2_DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


def _v2_schemas() -> dict[str, Any]:
    parameters = {"type": "object", "additionalProperties": True}
    shape = {"type": "array", "items": {"type": "integer", "minimum": -1}}
    # A request's tensor has a shape of one dimension or more, each known.
    request_shape = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    tensor_data = {
        "description": "The tensor's values, flat in row-major order or nested by shape.",
        "type": "array",
    }
    return {
        "V2Parameters": parameters,
        "V2ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "V2Live": {
            "type": "object",
            "required": ["live"],
            "properties": {"live": {"type": "boolean"}},
        },
        "V2Ready": {
            "type": "object",
            "required": ["ready"],
            "properties": {"ready": {"type": "boolean"}},
        },
        "V2ModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "ready": {"type": "boolean"},
            },
        },
        "V2MetadataTensor": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"enum": V2_DATATYPES},
                "shape": shape,
                "parameters": _ref("V2Parameters"),
            },
        },
        "V2ModelMetadata": {
            "type": "object",
            "required": ["name", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("V2MetadataTensor")},
                "outputs": {"type": "array", "items": _ref("V2MetadataTensor")},
                "parameters": _ref("V2Parameters"),
            },
        },
        "V2RequestInput": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": request_shape,
                "datatype": {"enum": V2_DATATYPES},
                "parameters": _ref("V2Parameters"),
                "data": tensor_data,
            },
            "description": "The values are in `data`, or (binary tensor extension) in the "
            "body after the JSON, `parameters.binary_data_size` bytes.",
            "anyOf": [
                {"required": ["data"]},
                {
                    "required": ["parameters"],
                    "properties": {"parameters": {"required": ["binary_data_size"]}},
                },
            ],
        },
        "V2RequestOutput": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": _ref("V2Parameters")},
        },
        "V2InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": _ref("V2Parameters"),
                "inputs": {"type": "array", "minItems": 1, "items": _ref("V2RequestInput")},
                "outputs": {"type": "array", "items": _ref("V2RequestOutput")},
            },
        },
        "V2ResponseOutput": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": shape,
                "datatype": {"enum": V2_DATATYPES},
                "parameters": _ref("V2Parameters"),
                "data": tensor_data,
            },
        },
        "V2InferenceResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": {
                    "type": "object",
                    "description": "backend: what computed the outputs; in an experiment, "
                    "experiment (its id) and variant (the one that served).",
                    "properties": {
                        "backend": _BACKEND,
                        "experiment": {"type": "string"},
                        "variant": {"type": "string"},
                    },
                    "additionalProperties": True,
                },
                "outputs": {"type": "array", "items": _ref("V2ResponseOutput")},
            },
        },
    }


def _mlflow_schemas() -> dict[str, Any]:
    records = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "additionalProperties": _SCALAR},
    }
    # Rows (lists in feature order or objects), or columns: {name: [values]} or, for one
    # row, {name: value}.
    tensor_input = {
        "oneOf": [
            {"type": "array", "minItems": 1},
            {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {"type": "array", "minItems": 1},
            },
            {"type": "object", "minProperties": 1, "additionalProperties": _SCALAR},
        ]
    }
    params = {"type": "object", "description": "Inference parameters (accepted, not used)."}
    return {
        "MlflowRequest": {
            "description": "Exactly one of the four MLflow input formats.",
            "oneOf": [
                {
                    "title": "dataframe_split",
                    "type": "object",
                    "required": ["dataframe_split"],
                    "additionalProperties": False,
                    "properties": {
                        "dataframe_split": {
                            "type": "object",
                            "required": ["columns", "data"],
                            "additionalProperties": False,
                            "properties": {
                                "columns": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                    "uniqueItems": True,
                                },
                                "index": {"type": "array"},
                                "data": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {"type": "array"},
                                },
                            },
                        },
                        "params": params,
                    },
                },
                {
                    "title": "dataframe_records",
                    "type": "object",
                    "required": ["dataframe_records"],
                    "additionalProperties": False,
                    "properties": {"dataframe_records": records, "params": params},
                },
                {
                    "title": "instances",
                    "type": "object",
                    "required": ["instances"],
                    "additionalProperties": False,
                    "properties": {"instances": tensor_input, "params": params},
                },
                {
                    "title": "inputs",
                    "type": "object",
                    "required": ["inputs"],
                    "additionalProperties": False,
                    "properties": {"inputs": tensor_input, "params": params},
                },
            ],
        },
        "MlflowResponse": {
            "type": "object",
            "required": ["predictions"],
            "properties": {
                "predictions": {"type": "array"},
                "experiment": {
                    **_EXPERIMENT_VARIANT,
                    "required": ["id", "variant", "version"],
                    "properties": {
                        **_EXPERIMENT_VARIANT["properties"],
                        "version": {"type": "integer"},
                    },
                },
            },
        },
    }


# --- fixed responses ---------------------------------------------------------------


# The same failures in each protocol's error shape: native {"error": {...}},
# Open Inference Protocol v2 {"error": "..."}, MLflow {"error_code", "message"}.
ERROR_FORMATS = {"": "Error", "V2": "V2Error", "Mlflow": "MlflowError"}
# The error shape of each tag's routes (the others answer the native one).
TAG_ERROR_FORMATS = {"v2": "V2", "mlflow": "Mlflow"}
# Each kind of failure: the error the service raises for it, whose status is the response's
# status, and what it means.
_FAILURES: dict[str, tuple[type[ServiceError], str]] = {
    "BadRequest": (
        BadRequest,
        "A malformed request: not JSON, a payload of the wrong shape, a malformed model "
        "name or version, a body in a Content-Encoding that does not decode "
        "(`invalid_json`, `invalid_payload`, `missing_instances`, `invalid_model_name`, ...), "
        "an experiment that cannot run as given (`invalid_experiment`), a client key for "
        "an experiment that is not a string or an integer of at most 256 characters "
        "(`invalid_client_key`); "
        "JSON that is not UTF-8 or starts with a byte order mark (`invalid_encoding`), a "
        "number beyond a 64-bit float's range (`number_out_of_range`), an object repeating "
        "a key (`duplicate_key`).",
    ),
    "Unauthorized": (
        Unauthorized,
        "No key, or not a valid one (`unauthorized`); `WWW-Authenticate` says how to send one.",
    ),
    "Forbidden": (
        Forbidden,
        "A valid key that does not grant this route's scope, or the admin API while no admin "
        "key is configured (`forbidden`).",
    ),
    "NotFound": (
        NotFound,
        "Unknown model, version or alias (`model_not_found`, `version_not_found`, "
        "`alias_not_found`), or no experiment to stop (`experiment_not_found`).",
    ),
    "Conflict": (
        Conflict,
        "A conflict: the promotion gate refused (`promotion_refused`), an experiment runs "
        "already (`experiment_running`), or /invocations has several models and no default "
        "(`default_model_not_set`).",
    ),
    "TooLarge": (
        TooManyInstances,
        "Too many instances (`too_many_instances`), or a body over the size limit, decoded "
        "or not (`body_too_large`).",
    ),
    "UnsupportedMediaType": (
        UnsupportedMediaType,
        "A `Content-Type` this route does not take, a charset other than UTF-8, or a "
        "`Content-Encoding` other than gzip and deflate.",
    ),
    "InvalidInput": (
        InvalidInput,
        "The instances do not fit the model's input schema (`invalid_input`), or the model "
        "cannot score them: its outputs would be NaN or infinite (`non_finite_output`); the "
        "details list each problem with its instance and feature (InputProblem).",
    ),
    "Internal": (
        ServiceError,
        "An unexpected fault; quote the request id when reporting it.",
    ),
    "NotReady": (
        ModelNotReady,
        "The model cannot be served now (`model_not_ready`, `not_ready`), or no worker "
        "answered in time (`upstream_unavailable`, from Nginx).",
    ),
}
# Answers only Nginx makes, in the native shape on every route: no error class raises them.
_EDGE_FAILURES: dict[str, tuple[HTTPStatus, str]] = {
    "TooManyRequests": (
        HTTPStatus.TOO_MANY_REQUESTS,
        "Over the rate limit of this key or address, or too many requests in progress "
        "from this address (`rate_limited`, `too_many_connections`); `Retry-After` says "
        "when to try again.",
    ),
    "GatewayTimeout": (
        HTTPStatus.GATEWAY_TIMEOUT,
        "No worker answered in time (`upstream_timeout`).",
    ),
    "UriTooLong": (
        HTTPStatus.REQUEST_URI_TOO_LONG,
        "A request line longer than Nginx's header buffer (`request_uri_too_large`).",
    ),
    "HeadersTooLarge": (
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        "A header, or all of them together, larger than Nginx's header buffers "
        "(`request_header_fields_too_large`).",
    ),
}
STATUSES = {
    **{kind: str(int(error.status)) for kind, (error, _) in _FAILURES.items()},
    **{kind: str(int(status)) for kind, (status, _) in _EDGE_FAILURES.items()},
}
# What any operation may answer, whatever it does: an unexpected fault, no worker free or
# none in time, and Nginx's limits on rates, request lines and headers.
_ALWAYS = (
    "Internal",
    "NotReady",
    "TooManyRequests",
    "GatewayTimeout",
    "UriTooLong",
    "HeadersTooLarge",
)
# What an operation that needs a key answers without one, or with one lacking its scope.
_KEY_FAILURES = ("Unauthorized", "Forbidden")


def _fixed_responses() -> dict[str, Any]:
    responses = {
        prefix + kind: _error(description, schema)
        for prefix, schema in ERROR_FORMATS.items()
        for kind, (_, description) in _FAILURES.items()
    }
    for kind, (_, description) in _EDGE_FAILURES.items():
        responses[kind] = _error(description)
    for prefix, schema in ERROR_FORMATS.items():
        if prefix:
            # What Nginx answers itself (a body too large, no worker free) has the native
            # shape whatever the route.
            for kind in _FAILURES:
                media = responses[prefix + kind]["content"]["application/json"]
                media["schema"] = _or_edge(schema)
    return responses


def _errors(prefix: str, *kinds: str) -> dict[str, Any]:
    return {STATUSES[kind]: _r(prefix + kind) for kind in sorted(kinds, key=STATUSES.get)}


def _or_edge(schema: str) -> dict[str, Any]:
    """A 503's schema: the route's own, or Nginx's error when no worker answered."""
    return {"oneOf": [_ref(schema), _ref("Error")]}


def _kind_response(prefix: str, kind: str) -> dict[str, str]:
    return _r(kind if kind in _EDGE_FAILURES else prefix + kind)


def _r(name: str) -> dict[str, str]:
    return {"$ref": "#/components/responses/" + name}


# --- fixed paths ---------------------------------------------------------------------


# Besides what every operation may answer (see _complete): a prediction's own failures.
_PREDICT_FAILURES = ("TooLarge", "InvalidInput")
_HTML = {"text/html": {"schema": {"type": "string"}}}


def _predict_op(
    operation_id: str,
    summary: str,
    request: str,
    answer: str,
    *,
    parameters: Iterable[dict[str, Any]] = (),
    description: str | None = None,
    example: Any = None,
) -> dict[str, Any]:
    return _op(
        "native",
        operation_id,
        summary,
        {
            "200": _prediction("The predictions.", _json(_ref(answer))),
            **_errors("", "NotFound", *_PREDICT_FAILURES),
        },
        description=description,
        parameters=parameters,
        body={"required": True, "content": _json(_ref(request), example)},
    )


def _native_paths() -> dict[str, Any]:
    return {
        "/v1/models/{model_ref}/predict": {
            "post": _predict_op(
                "predict",
                "Predict with a model (any served model; typed per model below)",
                "PredictRequest",
                "PredictResponse",
                parameters=[P_MODEL_REF],
                description='The body is `{"instances": [...]}`: each instance an object '
                "keyed by feature name or a list of values in feature order, not mixed. "
                "Bad input is a 4xx naming the instance and the feature, never a 500. "
                "While the model runs an experiment, a request to the bare name goes to the "
                "variant assigned to it (sticky on the experiment's key header, or its key "
                "field next to `instances`); the answer's `experiment` and the "
                "`X-Model-Variant` and `X-Experiment-Id` headers name it. `name@version` and "
                "`name@alias` bypass the experiment.",
            )
        }
    }


def _models_paths() -> dict[str, Any]:
    card = _response("The model card: a self-contained HTML page.", _HTML)
    return {
        "/v1/models": {
            "get": _op(
                "models",
                "list_models",
                "Every served model, with aliases, versions, features and classes",
                {"200": _response("The served models.", _json(_ref("ModelList")))},
            )
        },
        "/v1/models/{name}": {
            "get": _op(
                "models",
                "show_model",
                "One model: its versions, alias history and the default version's metadata",
                {
                    "200": _response("The model.", _json(_ref("ModelDetail"))),
                },
                parameters=[P_NAME],
            )
        },
        "/v1/models/{name}/versions/{version}": {
            "get": _op(
                "models",
                "show_version",
                "One version's summary and its complete metadata",
                {
                    "200": _response("The version.", _json(_ref("VersionDetail"))),
                },
                parameters=[P_NAME, P_VERSION],
            )
        },
        "/v1/models/{name}/versions/{version}/card": {
            "get": _op(
                "models",
                "version_card",
                "The model card of one version (HTML)",
                {
                    "200": card,
                },
                parameters=[P_NAME, P_VERSION],
            )
        },
        "/v1/models/{model_ref}/card": {
            "get": _op(
                "models",
                "model_card",
                "The model card of the default alias, or of NAME@VERSION / NAME@ALIAS (HTML)",
                {
                    "200": card,
                },
                parameters=[P_MODEL_REF],
            )
        },
    }


def _admin_paths() -> dict[str, Any]:
    alias_change = _response("The alias moved.", _json(_ref("AliasChange")))
    return {
        "/v1/admin/models/{name}/promote": {
            "post": _op(
                "admin",
                "promote",
                "Point an alias at a version (through the promotion gate)",
                {"200": alias_change, **_errors("", "Conflict")},
                parameters=[P_NAME],
                body={"required": True, "content": _json(_ref("PromoteRequest"))},
            )
        },
        "/v1/admin/models/{name}/rollback": {
            "post": _op(
                "admin",
                "rollback",
                "Move an alias back to the version it pointed at before",
                {"200": alias_change, **_errors("", "Conflict")},
                parameters=[P_NAME],
                body={"required": False, "content": _json(_ref("RollbackRequest"))},
            )
        },
        "/v1/admin/reload": {
            "post": _op(
                "admin",
                "reload",
                "Forget load failures and look at the store again",
                {"200": _response("Readiness after the reload.", _json(_ref("ReloadResult")))},
            )
        },
    }


_TARGET = {
    "anyOf": [
        {"type": "string", "pattern": f"^{VERSION_OR_ALIAS}$"},
        _VERSION_NUMBER,
    ],
    "description": "A version number or an alias of the model.",
}
_WEIGHT = {"type": "number", "minimum": 0, "maximum": experiments.TOTAL_WEIGHT}
_NULLABLE_REASON = {
    "type": ["string", "null"],
    "maxLength": experiment_control.MAX_REASON_CHARS,
    "description": "Why, kept in the experiment's history.",
}


def _experiment_schemas() -> dict[str, Any]:
    number_or_null = {"type": ["number", "null"]}
    shadow = {
        "type": "object",
        "required": ["target", "share"],
        "properties": {
            "target": {"type": "string"},
            "share": {"type": "number"},
            "version": {
                "type": ["integer", "null"],
                "description": "The version the target resolves to now (null: none).",
            },
        },
    }
    return {
        "ExperimentStartRequest": {
            "type": "object",
            "additionalProperties": False,
            "description": "Variants are versions or aliases of the model with weights adding "
            "up to 100. Without variants, a request that names a shadow serves every request "
            "from the default alias and runs the shadow on its share.",
            "properties": {
                "variants": {
                    "oneOf": [
                        {
                            "type": "object",
                            "propertyNames": {"pattern": f"^{VERSION_OR_ALIAS}$"},
                            "additionalProperties": _WEIGHT,
                            "minProperties": 1,
                            "description": "Name to weight, in order.",
                        },
                        {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name", "weight"],
                                "additionalProperties": False,
                                "properties": {"name": _TARGET, "weight": _WEIGHT},
                            },
                        },
                        {
                            "type": "string",
                            "description": "As modelctl takes them: `production=90,staging=10`.",
                        },
                        {"type": "null"},
                    ],
                    "example": {"production": 90, "staging": 10},
                },
                "key_header": {
                    "type": ["string", "null"],
                    "pattern": f"^(?:{experiments.HEADER_PATTERN.pattern})?$",
                    "description": "Sticky assignment on this request header (e.g. X-Client-ID).",
                },
                "key_field": {
                    "type": ["string", "null"],
                    "pattern": f"^(?:{experiments.FIELD_PATTERN.pattern})?$",
                    "description": "... or on this field of the request body.",
                },
                "shadow": {
                    "type": ["object", "null"],
                    "required": ["target"],
                    "additionalProperties": False,
                    "properties": {
                        "target": _TARGET,
                        "share": {
                            "type": ["number", "null"],
                            "exclusiveMinimum": 0,
                            "maximum": 1,
                            "default": experiment_control.DEFAULT_SHADOW_SHARE,
                        },
                    },
                    "description": "Also run this share of the requests on the target, "
                    "answering from the variant.",
                },
                "alpha": {
                    **number_or_null,
                    "exclusiveMinimum": 0,
                    "maximum": 0.5,
                    "default": experiments.DEFAULT_ALPHA,
                },
                "min_effect": {
                    **number_or_null,
                    "exclusiveMinimum": 0,
                    "default": experiments.DEFAULT_MIN_EFFECT,
                },
                "reason": _NULLABLE_REASON,
            },
        },
        "ExperimentStopRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"reason": _NULLABLE_REASON},
        },
        "ExperimentStatus": {
            "type": "object",
            "required": ["model", "experiment", "history"],
            "properties": {
                "model": {"type": "string"},
                "experiment": {
                    "oneOf": [
                        {"type": "null", "description": "No experiment runs."},
                        {
                            "type": "object",
                            "required": [
                                "id",
                                "kind",
                                "started_at",
                                "variants",
                                "key_header",
                                "key_field",
                                "shadow",
                                "alpha",
                                "min_effect",
                            ],
                            "properties": {
                                "id": {"type": "string"},
                                "kind": {"enum": list(experiments.KINDS)},
                                "started_at": {"type": "string"},
                                "variants": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["name", "weight", "version"],
                                        "properties": {
                                            "name": {"type": "string"},
                                            "weight": {"type": "number"},
                                            "version": shadow["properties"]["version"],
                                        },
                                    },
                                },
                                "key_header": {"type": ["string", "null"]},
                                "key_field": {"type": ["string", "null"]},
                                "shadow": {"oneOf": [shadow, {"type": "null"}]},
                                "alpha": {"type": "number"},
                                "min_effect": {"type": "number"},
                            },
                        },
                    ]
                },
                "history": {
                    "type": "array",
                    "description": "The last lines of the history, newest last: "
                    "{at, action, id, reason?, ...}.",
                    "items": {"type": "object"},
                },
            },
        },
    }


def _experiment_paths() -> dict[str, Any]:
    status = _response("The experiment now (null when none runs).", _json(_ref("ExperimentStatus")))
    return {
        "/v1/admin/experiments/{name}": {
            "get": _op(
                "experiments",
                "experiment_status",
                "The experiment running on a model, the version each variant serves now, "
                "and its recent history",
                {"200": status},
                parameters=[P_NAME],
            ),
            "post": _op(
                "experiments",
                "experiment_start",
                "Start an experiment: split the model's requests between variants",
                {"200": status, **_errors("", "Conflict")},
                parameters=[P_NAME],
                body={"required": True, "content": _json(_ref("ExperimentStartRequest"))},
            ),
        },
        "/v1/admin/experiments/{name}/stop": {
            "post": _op(
                "experiments",
                "experiment_stop",
                "Stop the running experiment: every request goes to the default alias again",
                {"200": status},
                parameters=[P_NAME],
                body={"required": False, "content": _json(_ref("ExperimentStopRequest"))},
            )
        },
    }


def _experiment_report_schemas() -> dict[str, Any]:
    number_or_null = {"type": ["number", "null"]}
    interval = {
        "type": ["array", "null"],
        "items": number_or_null,
        "minItems": 2,
        "maxItems": 2,
        "description": "The confidence interval at 1 - alpha (null without data).",
    }
    figure = {
        "type": "object",
        "required": ["value", "interval"],
        "properties": {"value": number_or_null, "interval": interval},
    }
    needed = {
        "type": ["object", "null"],
        "description": "Rows still to collect per arm for min_effect at 80 % power (null: "
        "not known until both variants have data).",
        "properties": {
            "control": {"type": "integer"},
            "variant": {"type": "integer"},
            "needed_control": {"type": "integer"},
            "needed_variant": {"type": "integer"},
            "unit": {"type": "string"},
        },
    }
    test = {
        "type": "object",
        "required": ["difference", "interval", "p_value", "significant", "still_needed"],
        "properties": {
            "difference": {**number_or_null, "description": "Variant minus control."},
            "interval": interval,
            "p_value": number_or_null,
            "significant": {"type": "boolean"},
            "better": {"type": ["boolean", "null"]},
            "still_needed": needed,
            "unit": {"type": "string"},
        },
    }
    return {
        "ExperimentReport": {
            "type": "object",
            "description": "See docs/experiments/report.md: per variant its figures, per "
            "comparison with the control (the first variant) the tests and a verdict.",
            "required": ["model", "experiment", "alpha", "variants", "comparisons", "winner"],
            "properties": {
                "model": {"type": "string"},
                "experiment": {"type": "string"},
                "kind": {"type": "string"},
                "task": {"type": "string"},
                "metric": {"type": "string", "enum": ["accuracy", "mae"]},
                "alpha": {"type": "number"},
                "alpha_per_test": {"type": "number"},
                "tests": {"type": "integer"},
                "min_effect": {"type": "number"},
                "power": {"type": "number"},
                "control": {"type": "string"},
                "variants": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "requests", "errors", "latency", "quality"],
                        "properties": {
                            "name": {"type": "string"},
                            "weight": number_or_null,
                            "versions": {"type": "object"},
                            "requests": {"type": "integer"},
                            "errors": figure,
                            "latency": {
                                "type": "object",
                                "properties": {"p50": number_or_null, "p99": number_or_null},
                            },
                            "quality": figure,
                        },
                    },
                },
                "comparisons": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["variant", "control", "verdict", "significant"],
                        "properties": {
                            "variant": {"type": "string"},
                            "control": {"type": "string"},
                            "verdict": {
                                "type": "string",
                                "enum": [
                                    "better",
                                    "worse",
                                    "no significant difference",
                                    "too little data",
                                ],
                            },
                            "significant": {"type": "boolean"},
                            "errors": test,
                            "quality": test,
                            "still_needed": needed,
                        },
                    },
                },
                "winner": {"type": ["string", "null"]},
                "significant": {"type": "boolean"},
                "shadow": {
                    "type": ["object", "null"],
                    "description": "What the shadow candidate did on the shadowed requests "
                    "(null when the experiment has no shadow): see docs/experiments/shadow.md.",
                    "required": ["target", "share", "candidates"],
                    "properties": {
                        "target": {"type": "string"},
                        "share": {"type": "number"},
                        "candidates": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["candidate", "runs", "dropped", "errors", "rows"],
                                "properties": {
                                    "candidate": {"type": "string"},
                                    "candidate_version": {"type": ["integer", "null"]},
                                    "runs": {"type": "integer"},
                                    "dropped": {"type": "integer"},
                                    "errors": {
                                        "type": "object",
                                        "additionalProperties": {"type": "integer"},
                                    },
                                    "error_rate": figure,
                                    "rows": {"type": "integer"},
                                    "mean_ms": number_or_null,
                                    "agreement": figure,
                                    "difference": figure,
                                },
                            },
                        },
                    },
                },
            },
        },
        "ExperimentConcludeRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "winner": {
                    "type": "string",
                    "description": "The variant to promote (default: the report's winner).",
                },
                "alias": {"type": "string", "description": "Default: the default alias."},
                "reason": {"type": "string", "maxLength": 1000},
                "force": {"type": "boolean", "description": "Past the promotion gate."},
            },
        },
        "ExperimentConclusion": {
            "type": "object",
            "required": ["model", "experiment", "winner", "version", "alias", "promoted"],
            "properties": {
                "model": {"type": "string"},
                "experiment": {"type": "string"},
                "winner": {"type": "string"},
                "version": {"type": "integer"},
                "alias": {"type": "string"},
                "previous": {"type": ["integer", "null"]},
                "promoted": {"type": "boolean"},
                "chosen_by": {"type": "string", "enum": ["report", "named"]},
                "forced_past_gate": {"type": ["string", "null"]},
                "report": {"type": "object"},
            },
        },
        "ExperimentTotals": {
            "type": "object",
            "description": "This host's sufficient statistics per variant; a fleet's add up.",
            "required": ["model", "experiment", "latency_buckets", "variants"],
            "properties": {
                "model": {"type": "string"},
                "experiment": {"type": "string"},
                "latency_buckets": {
                    "type": "array",
                    "items": {"type": ["number", "string"]},
                    "description": 'Upper bounds in seconds, the last "+Inf".',
                },
                "variants": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [
                            "variant",
                            "versions",
                            "requests",
                            "errors",
                            "latency_counts",
                            "labelled",
                            "correct",
                            "abs_error_sum",
                            "abs_error_sq_sum",
                        ],
                    },
                },
            },
        },
    }


P_EXPERIMENT = {
    "name": "experiment",
    "in": "query",
    "required": False,
    "description": "An experiment's id (default: the running one, else the last one started).",
    "schema": {"type": "string", "maxLength": 200},
}


def _experiment_report_paths() -> dict[str, Any]:
    return {
        "/v1/admin/experiments/{name}/report": {
            "get": _op(
                "experiments",
                "experiment_report",
                "An experiment's report from this host's evidence: per variant requests, "
                "error rate, latency, live quality; per comparison difference, p-value, "
                "significance and the sample still needed",
                {"200": _response("The report.", _json(_ref("ExperimentReport")))},
                parameters=[P_NAME, P_EXPERIMENT],
            )
        },
        "/v1/admin/experiments/{name}/conclude": {
            "post": _op(
                "experiments",
                "experiment_conclude",
                "End the running experiment: promote the winner (by this host's evidence, or "
                "the one named) through the promotion gate, then stop it",
                {
                    "200": _response("What was promoted.", _json(_ref("ExperimentConclusion"))),
                    **_errors("", "Conflict"),
                },
                description="Refused (409 nothing_significant) while no variant is "
                "significantly better or worse than the control and no winner is named; "
                "refused (409 promotion_refused) by the promotion gate unless forced. A "
                "refusal stops nothing.",
                parameters=[P_NAME],
                body={"required": False, "content": _json(_ref("ExperimentConcludeRequest"))},
            )
        },
        "/v1/admin/experiments/{name}/totals": {
            "get": _op(
                "experiments",
                "experiment_totals",
                "This host's evidence of an experiment: per variant counts and sums that add "
                "up across the hosts of a fleet",
                {"200": _response("The totals.", _json(_ref("ExperimentTotals")))},
                parameters=[P_NAME, P_EXPERIMENT],
            )
        },
    }


def _experiment_shadow_paths() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    number_or_null = {"type": ["number", "null"]}
    candidate = {
        "type": "object",
        "required": ["experiment", "candidate", "runs", "dropped", "errors", "rows"],
        "properties": {
            "experiment": {"type": "string"},
            "candidate": {
                "type": "string",
                "description": "The target, as the experiment names it.",
            },
            "candidate_version": {"type": ["integer", "null"]},
            "task": {"type": "string"},
            "runs": count,
            "dropped": count,
            "errors": {"type": "object", "additionalProperties": count},
            "error_rate": number_or_null,
            "rows": count,
            "mean_seconds": number_or_null,
            "agreed": count,
            "agreement": number_or_null,
            "agreement_interval": {"type": ["array", "null"], "items": {"type": "number"}},
            "difference": {
                "type": "object",
                "properties": {k: number_or_null for k in ("mean", "std", "mean_abs", "max_abs")},
            },
        },
    }
    answer = {
        "type": "object",
        "required": ["model", "experiment", "candidates", "totals"],
        "properties": {
            "model": {"type": "string"},
            "experiment": {"type": "string"},
            "candidates": {"type": "array", "items": candidate},
            "totals": {
                "type": "array",
                "items": {"type": "object"},
                "description": "The sums behind the figures: they add up over a fleet's hosts.",
            },
        },
    }
    return {
        "/v1/admin/experiments/{name}/shadow": {
            "get": _op(
                "experiments",
                "experiment_shadow",
                "What an experiment's shadow candidate did on this host: runs, drops, errors "
                "by kind, agreement with the primary (classifiers) or differences from it "
                "(regressors)",
                {"200": _response("The shadow's figures.", _json(answer))},
                parameters=[P_NAME, P_EXPERIMENT],
            )
        },
    }


def _health_paths() -> dict[str, Any]:
    readiness = _json(_ref("Readiness"))
    return {
        "/healthz": {
            "get": _op(
                "health",
                "healthz",
                "The process answers",
                {"200": _response("Alive.", _json(_ref("Health")))},
            )
        },
        "/readyz": {
            "get": _op(
                "health",
                "readyz",
                "Every served model's default version is loaded in this worker",
                {
                    "200": _response("Ready.", readiness),
                    "503": _response(
                        "Not ready; the reason per model.", _json(_or_edge("Readiness"))
                    ),
                },
            )
        },
        "/metrics": {
            "get": _op(
                "health",
                "metrics",
                "Prometheus metrics, summed over every worker of this host",
                {
                    "200": _response(
                        "The Prometheus text exposition format (OpenMetrics when the scraper "
                        "asks for it).",
                        {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    ),
                    "404": _error("Metrics are turned off (MODEL_SERVICE_METRICS=false)."),
                },
            )
        },
    }


def _v2_paths() -> dict[str, Any]:
    infer_errors = _errors("V2", *_PREDICT_FAILURES)

    def infer(operation_id: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
        binary = {
            "schema": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": f"Binary tensor extension: the JSON request of "
                f"`{BINARY_HEADER}` bytes, then the raw tensor data of each input with "
                '`"parameters": {"binary_data_size": N}`.',
            }
        }
        header = {
            "name": BINARY_HEADER,
            "in": "header",
            "required": False,
            "description": "With the binary tensor extension: the length of the JSON part.",
            "schema": {"type": "integer", "minimum": 0},
        }
        response = _prediction(
            "The outputs (binary too when the request asks for `binary_data` outputs; then "
            f"the `{BINARY_HEADER}` response header gives the JSON part's length).",
            {
                **_json(_ref("V2InferenceResponse")),
                "application/octet-stream": {
                    "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                },
            },
        )
        response["headers"][BINARY_HEADER] = {
            "description": "With binary outputs: the length of the JSON part.",
            "schema": {"type": "integer"},
        }
        return _op(
            "v2",
            operation_id,
            "Run inference (Open Inference Protocol v2)",
            {"200": response, **infer_errors},
            parameters=[*parameters, header],
            body={
                "required": True,
                "content": {
                    **_json(_ref("V2InferenceRequest")),
                    "application/octet-stream": binary,
                },
            },
        )

    def model_get(operation_id: str, summary: str, schema: str, params: list) -> dict[str, Any]:
        return _op(
            "v2",
            operation_id,
            summary,
            {"200": _response(summary + ".", _json(_ref(schema)))},
            parameters=params,
        )

    def model_ready(operation_id: str, params: list) -> dict[str, Any]:
        ready = _json(_ref("V2ModelReady"))
        return _op(
            "v2",
            operation_id,
            "Model readiness",
            {
                "200": _response("Ready.", ready),
                "503": _response("It cannot serve now.", _json(_or_edge("V2ModelReady"))),
            },
            parameters=params,
        )

    both = [P_NAME, P_V2_VERSION]
    return {
        "/v2": {
            "get": _op(
                "v2",
                "v2_server_metadata",
                "Server metadata",
                {"200": _response("Server metadata.", _json(_ref("V2ServerMetadata")))},
            )
        },
        "/v2/health/live": {
            "get": _op(
                "v2",
                "v2_live",
                "Server liveness",
                {"200": _response("Live.", _json(_ref("V2Live")))},
            )
        },
        "/v2/health/ready": {
            "get": _op(
                "v2",
                "v2_ready",
                "Server readiness",
                {
                    "200": _response("Ready.", _json(_ref("V2Ready"))),
                    "503": _response("Not ready.", _json(_or_edge("V2Ready"))),
                },
            )
        },
        "/v2/models/{name}": {
            "get": model_get("v2_model_metadata", "Model metadata", "V2ModelMetadata", [P_NAME])
        },
        "/v2/models/{name}/versions/{version}": {
            "get": model_get(
                "v2_model_version_metadata", "Model version metadata", "V2ModelMetadata", both
            )
        },
        "/v2/models/{name}/ready": {"get": model_ready("v2_model_ready", [P_NAME])},
        "/v2/models/{name}/versions/{version}/ready": {
            "get": model_ready("v2_model_version_ready", both)
        },
        "/v2/models/{name}/infer": {"post": infer("v2_infer", [P_NAME])},
        "/v2/models/{name}/versions/{version}/infer": {"post": infer("v2_version_infer", both)},
    }


def _mlflow_paths() -> dict[str, Any]:
    def invocations(
        operation_id: str,
        summary: str,
        params: list,
        conflict: tuple[str, ...] = (),
        description: str | None = None,
    ) -> dict[str, Any]:
        return _op(
            "mlflow",
            operation_id,
            summary,
            {
                "200": _prediction("The predictions.", _json(_ref("MlflowResponse"))),
                **_errors("Mlflow", *_PREDICT_FAILURES, *conflict),
            },
            description=description
            or "Answers `predict`'s output (class labels or numbers), without probabilities.",
            parameters=params,
            body={
                "required": True,
                "content": {
                    **_json(_ref("MlflowRequest")),
                    "text/csv": {
                        "schema": {
                            "type": "string",
                            "description": "A header row of feature names, then one row "
                            "per instance.",
                        }
                    },
                },
            },
        )

    def ping(operation_id: str) -> dict[str, Any]:
        return _op(
            "mlflow",
            operation_id,
            "Ready, as MLflow's scoring server answers it",
            {
                "200": _response(
                    "Ready: every served model's default version is loaded and /invocations' "
                    "model can be served.",
                    _json(_ref("MlflowReady")),
                ),
            },
        )

    return {
        "/invocations": {
            "post": invocations(
                "mlflow_invocations",
                "Score with the default model (MLflow scoring-server formats)",
                description="The default model is the setting `default_model` "
                "(`MODEL_SERVICE_DEFAULT_MODEL`), or the only served model; with several "
                "models and no default, 409 `RESOURCE_CONFLICT`. Answers `predict`'s output "
                "(class labels or numbers), without probabilities.",
                params=[],
                conflict=("Conflict",),
            )
        },
        "/v1/models/{model_ref}/invocations": {
            "post": invocations(
                "mlflow_model_invocations",
                "Score with a model (MLflow scoring-server formats)",
                [P_MODEL_REF],
            )
        },
        "/ping": {"get": ping("mlflow_ping")},
        "/health": {"get": ping("mlflow_health")},
    }


def _docs_paths() -> dict[str, Any]:
    return {
        "/openapi.json": {
            "get": _op(
                "docs",
                "openapi",
                "This document (OpenAPI 3.1), built from the models being served",
                {"200": _response("The document.", _json(_ref("OpenAPIDocument")))},
            )
        },
        "/docs": {
            "get": _op(
                "docs",
                "docs",
                "This document as a page, with each served model's features and a curl example",
                {"200": _response("The page.", _HTML)},
            )
        },
    }


def _status_paths() -> dict[str, Any]:
    """The status page and the JSON it polls (service.api.status)."""
    nullable_number = {"type": ["number", "null"]}
    counts = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
    traffic = {
        "type": ["object", "null"],
        "description": "Cumulative figures of the model's prediction routes since the "
        "metrics began; rates come from the difference of two readings. Null without "
        "metrics.",
        "required": ["requests", "by_version", "routes", "latency", "predictions"],
        "properties": {
            "requests": {
                **counts,
                "required": ["total", "2xx", "4xx", "5xx"],
                "description": "Requests answered, in all and by status class.",
            },
            "by_version": {"type": "object", "additionalProperties": counts},
            "routes": counts,
            "latency": {
                "type": "object",
                "required": ["buckets", "count", "sum"],
                "properties": {
                    "buckets": {
                        "type": "array",
                        "description": "[upper bound in seconds (null: +Inf), cumulative "
                        "count], bounds ascending.",
                        # A pair as items of one schema, not prefixItems: tools that read
                        # response schemas as Draft 4 turn prefixItems into a list of items.
                        "items": {
                            "type": "array",
                            "items": nullable_number,
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    },
                    "count": {"type": "integer", "minimum": 0},
                    "sum": {"type": "number", "minimum": 0},
                },
            },
            "predictions": {**counts, "description": "Predicted labels of a classifier."},
        },
    }
    model = {
        "type": "object",
        "required": [
            "name",
            "description",
            "task",
            "default_alias",
            "serving_version",
            "aliases",
            "served_versions",
            "primary_metric",
            "test_score",
            "baseline_score",
            "versions",
            "traffic",
            "quality",
            "drift",
        ],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": ["string", "null"]},
            "task": {"type": ["string", "null"]},
            "default_alias": {"type": "string"},
            "serving_version": {"type": ["integer", "null"]},
            "aliases": {"type": "object", "additionalProperties": {"type": "integer"}},
            "served_versions": {"type": "array", "items": {"type": "integer"}},
            "primary_metric": {"type": ["string", "null"]},
            "test_score": nullable_number,
            "baseline_score": nullable_number,
            "versions": {"type": "array", "items": {"type": "object"}},
            "traffic": traffic,
            "quality": {
                "type": ["object", "null"],
                "description": "Live quality per version, as /performance answers it.",
            },
            "drift": {
                "type": ["object", "null"],
                "description": "PSI per version and feature, as /drift answers it.",
            },
        },
    }
    body = {
        "type": "object",
        "required": [
            "server_time",
            "server_timestamp",
            "refresh_seconds",
            "window_seconds",
            "drift_threshold",
            "traffic_available",
            "traffic_error",
            "models",
        ],
        "properties": {
            "server_time": {"type": "string", "format": "date-time"},
            "server_timestamp": {"type": "number"},
            "refresh_seconds": {"type": "number"},
            "window_seconds": {"type": "number"},
            "drift_threshold": {"type": "number"},
            "quality_tolerance": {"type": "number"},
            "traffic_available": {"type": "boolean"},
            "traffic_error": {"type": ["string", "null"]},
            "models": {"type": "array", "items": model},
        },
    }
    page = _response("The page.", _HTML)
    summary = "The status page: every served model's scores, traffic, quality and drift"
    return {
        "/": {"get": _op("health", "status_page_root", summary, {"200": page})},
        "/status": {"get": _op("health", "status_page", summary, {"200": page})},
        "/v1/status": {
            "get": _op(
                "health",
                "status",
                "What the status page shows, with cumulative traffic figures",
                {"200": _response("The status.", _json(body))},
            )
        },
    }


def _monitoring_paths() -> dict[str, Any]:
    """Feedback, live quality and drift (service.api.monitoring)."""
    nullable_number = {"type": ["number", "null"]}
    label = {"type": ["string", "integer", "number", "boolean"]}
    item = {
        "type": "object",
        "required": ["request_id", "label"],
        "additionalProperties": False,
        "properties": {
            "request_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "The request id of the prediction (its answer's `request_id`).",
            },
            "index": {
                "type": "integer",
                "minimum": 0,
                "default": 0,
                "description": "The row's position in that request.",
            },
            "label": {**label, "description": "A class of the model, or a number (regressor)."},
        },
    }
    accepted = {
        "type": "object",
        "required": ["model", "accepted", "feedback"],
        "properties": {
            "model": {"type": "string"},
            "accepted": {"type": "integer", "minimum": 1},
            "feedback": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["request_id", "index", "version", "prediction", "label"],
                    "properties": {
                        "request_id": {"type": "string"},
                        "index": {"type": "integer"},
                        "version": {"type": "integer"},
                        "prediction": label,
                        "label": label,
                        "replaced": {
                            "type": "boolean",
                            "description": "A label given before for this row was replaced.",
                        },
                    },
                },
            },
        },
    }
    figures = {
        "type": "object",
        "properties": {
            "accuracy": nullable_number,
            "mae": nullable_number,
            "class_recall": {"type": "object", "additionalProperties": nullable_number},
        },
    }
    performance = {
        "type": "object",
        "required": ["model", "window", "tolerance", "versions"],
        "properties": {
            "model": {"type": "string"},
            "window": {"type": "integer"},
            "tolerance": {"type": "number"},
            "versions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["version", "metric", "count", "live", "test", "below_test_score"],
                    "properties": {
                        "version": {"type": "integer"},
                        "aliases": {"type": "array", "items": {"type": "string"}},
                        "task": {"type": "string"},
                        "metric": {"type": "string", "enum": ["accuracy", "mae"]},
                        "count": {"type": "integer", "description": "Labels in the window."},
                        "window": {"type": "integer"},
                        "feedback_total": {"type": "integer"},
                        "live": figures,
                        "test": figures,
                        "threshold": nullable_number,
                        "below_test_score": {"type": "boolean"},
                    },
                },
            },
        },
    }
    feature = {
        "type": "object",
        "required": [
            "kind",
            "status",
            "message",
            "psi",
            "p_value",
            "flagged",
            "count",
            "min_rows",
            "bins",
            "live",
            "training",
        ],
        "properties": {
            "kind": {"type": "string", "enum": ["numeric", "categorical"]},
            "status": {
                "type": "string",
                "enum": ["too_few_rows", "stable", "drifted"],
                "description": "too_few_rows until the feature has min_rows values; "
                "drifted when PSI > threshold and p_value < alpha.",
            },
            "message": {
                "type": "string",
                "description": 'The verdict in words, e.g. "too few rows (20 of 100)".',
            },
            "psi": nullable_number,
            "p_value": {
                **nullable_number,
                "description": "Pearson chi-square goodness of fit of the live bin counts "
                "against the training shares (bins merged to expect 5 values each).",
            },
            "alpha": {
                "type": "number",
                "description": "The level p_value is held to: alpha / the version's features.",
            },
            "flagged": {"type": "boolean"},
            "count": {"type": "integer"},
            "min_rows": {"type": "integer"},
            "missing": {"type": "integer"},
            "missing_rate": {"type": "object"},
            "bins": {"type": "array", "items": {"type": "string"}},
            "edges": {"type": "array", "items": {"type": "number"}},
            "live": {"type": "array", "items": {"type": "number"}},
            "live_counts": {"type": "array", "items": {"type": "integer"}},
            "training": {"type": "array", "items": {"type": "number"}},
        },
    }
    drift = {
        "type": "object",
        "required": ["model", "window_minutes", "threshold", "alpha", "min_rows", "versions"],
        "properties": {
            "model": {"type": "string"},
            "window_minutes": {"type": "integer"},
            "threshold": {"type": "number"},
            "alpha": {"type": "number"},
            "min_rows": {"type": "integer"},
            "epsilon": {"type": "number"},
            "versions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["version", "rows", "flagged", "too_few_rows", "features"],
                    "properties": {
                        "version": {"type": "integer"},
                        "aliases": {"type": "array", "items": {"type": "string"}},
                        "rows": {"type": "integer"},
                        "flagged": {"type": "array", "items": {"type": "string"}},
                        "too_few_rows": {"type": "array", "items": {"type": "string"}},
                        "features": {"type": "object", "additionalProperties": feature},
                    },
                },
            },
        },
    }
    unknown = _error(
        "A model not served (`model_not_found`), or a prediction unknown or no longer kept "
        "(`prediction_not_found`, naming the item)."
    )
    bad_label = _error(
        "A label that is not a class of the model, or not a number (`invalid_label`)."
    )
    return {
        "/v1/models/{name}/feedback": {
            "post": _op(
                "models",
                "feedback",
                "Labels for served predictions, joined by request id and row index",
                {
                    "200": _response("Every label was stored.", _json(accepted)),
                    "404": unknown,
                    "422": bad_label,
                },
                description="One object or a list of them, all or nothing. A second label "
                "for the same prediction replaces the first.",
                parameters=[P_NAME],
                body={
                    "required": True,
                    "content": _json(
                        {
                            "oneOf": [
                                item,
                                {
                                    "type": "array",
                                    "items": item,
                                    "minItems": 1,
                                    "maxItems": live.MAX_FEEDBACK_ITEMS,
                                },
                            ]
                        }
                    ),
                },
            )
        },
        "/v1/models/{name}/performance": {
            "get": _op(
                "models",
                "performance",
                "Live quality per version from feedback, next to the test score",
                {"200": _response("Live quality.", _json(performance))},
                parameters=[P_NAME],
            )
        },
        "/v1/models/{name}/drift": {
            "get": _op(
                "models",
                "drift",
                "Population stability index of every feature per version",
                {"200": _response("Drift.", _json(drift))},
                parameters=[P_NAME],
            )
        },
    }


@functools.cache
def _fixed() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    paths: dict[str, Any] = {}
    for part in (
        _native_paths,
        _models_paths,
        _admin_paths,
        _experiment_paths,
        _experiment_report_paths,
        _experiment_shadow_paths,
        _v2_paths,
        _mlflow_paths,
        _health_paths,
        _docs_paths,
        _status_paths,
        _monitoring_paths,
    ):
        paths.update(part())
    return paths, _fixed_schemas(), _fixed_responses()


# --- per-model schemas -------------------------------------------------------------


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def feature_schema(feature: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one feature's value, from its metadata entry."""
    dtype = feature["dtype"]
    allow_missing = feature.get("missing", "reject") == "allow"
    notes: list[str] = []
    if feature.get("description"):
        notes.append(str(feature["description"]))
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
            schema = {"type": kind, "examples": categories[:20]}
            notes.append(
                f"Training categories: {', '.join(map(str, categories[:20]))}"
                f"{' ...' if len(categories) > 20 else ''}; others are accepted "
                f"({feature.get('handle_unknown', 'ignore')})."
            )
        if text:
            notes.append("A number sent for a category means the category with that text.")
    else:
        schema = {"type": "integer" if dtype == "int64" else "number"}
        stats = feature.get("stats") or {}
        if "min" in stats and "max" in stats:
            text = f"Training range {_number_text(stats['min'])} to {_number_text(stats['max'])}"
            if "mean" in stats:
                text += f" (mean {_number_text(stats['mean'])})"
            notes.append(text + "; documentation, not a limit.")
    if allow_missing:
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


def prediction_schema(metadata: Mapping[str, Any], has_proba: bool) -> dict[str, Any]:
    name = metadata["name"]
    classes = metadata.get("classes")
    if metadata.get("task") == "classification" and classes:
        label: dict[str, Any] = {"enum": list(classes)}
    else:
        label = {"type": "number"}
    properties: dict[str, Any] = {
        "model": {"const": name},
        "version": {"type": "integer", "minimum": 1},
        "predictions": {"type": "array", "items": label},
        "backend": _BACKEND,
        "request_id": {"type": "string"},
        "experiment": _ref("ExperimentVariant"),
    }
    required = ["model", "version", "predictions", "backend", "request_id"]
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
        required[3:3] = ["probabilities", "classes"]  # before backend, as in the answer
    return {
        "title": f"{name} prediction",
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
        stats = feature.get("stats") or {}
        if feature["dtype"] == "category":
            categories = feature.get("categories") or [feature.get("fill_value")]
            instance[feature["name"]] = categories[0]
        elif feature["dtype"] == "int64":
            instance[feature["name"]] = round(float(stats.get("mean", 0)))
        else:
            instance[feature["name"]] = round(float(stats.get("mean", 0.0)), 4)
    return instance


def schema_names(name: str) -> dict[str, str]:
    """The component names of one model's schemas."""
    return {
        "instance": f"{name}.Instance",
        "row": f"{name}.Row",
        "request": f"{name}.PredictRequest",
        "response": f"{name}.PredictResponse",
    }


def _model_parts(
    model: Any, max_instances: int | None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    metadata = model_metadata(model)
    name = metadata["name"]
    names = schema_names(name)
    instances: dict[str, Any] = {
        "minItems": 1,
        "oneOf": [
            {"type": "array", "items": _ref(names["instance"])},
            {"type": "array", "items": _ref(names["row"])},
        ],
    }
    if max_instances:
        instances["maxItems"] = max_instances
    schemas = {
        names["instance"]: instance_schema(metadata),
        names["row"]: row_schema(metadata),
        names["request"]: {
            "title": f"{name} predict request",
            "type": "object",
            "required": ["instances"],
            "additionalProperties": False,
            "properties": {"instances": instances},
        },
        names["response"]: prediction_schema(metadata, _has_proba(model, metadata)),
    }
    task = metadata.get("task", "model")
    operation = _predict_op(
        f"predict_{name.replace('-', '_')}",
        f"Predict with {name} (version {metadata['version']}, {task})",
        names["request"],
        names["response"],
        description=(metadata.get("description") or "").strip()
        + f"\n\nServed by the default alias; `{name}@<version>` or `{name}@<alias>` on "
        "`/v1/models/{model_ref}/predict` may take other features (see "
        f"`/v1/models/{name}/versions/<version>`).",
        example={"instances": [example_instance(metadata)]},
    )
    return f"/v1/models/{name}/predict", {"post": operation}, schemas


# --- the document --------------------------------------------------------------------

SECURITY_SCHEME = "apiKey"
GENERIC_PREDICT = ("/v1/models/{model_ref}/predict", "post")
MODEL_NAME_PARAMETERS = frozenset({"name", "model_ref"})


def _complete(operation: dict[str, Any], scope: str | None) -> None:
    """Add what an operation may answer whatever it does: a fault or no worker free (500,
    503); with a body, a malformed or too large one or an unknown encoding (400, 413, 415);
    with path parameters, malformed or unknown names (400, 404); and when it needs a key
    (``scope``), no valid key or one without the scope (401, 403)."""
    kinds = list(_ALWAYS)
    if "requestBody" in operation:
        kinds += ["BadRequest", "TooLarge", "UnsupportedMediaType"]
    if any(p["in"] == "path" for p in operation["parameters"]):
        kinds += ["BadRequest", "NotFound"]
    if scope is not None:
        operation["security"] = [{SECURITY_SCHEME: [scope]}]
        kinds += _KEY_FAILURES
    prefix = TAG_ERROR_FORMATS.get(operation["tags"][0], "")
    responses = operation["responses"]
    for kind in kinds:
        responses.setdefault(STATUSES[kind], _kind_response(prefix, kind))
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
    fixed_paths, fixed_schemas, fixed_responses = _fixed()
    paths = copy.deepcopy(fixed_paths)
    schemas = copy.deepcopy(fixed_schemas)
    for path, item in paths.items():
        for method, operation in item.items():
            _complete(operation, scopes.get((path, method)))
    seen: set[str] = set()
    for model in sorted(served, key=lambda m: model_metadata(m)["name"]):
        name = model_metadata(model)["name"]
        if name in seen:
            raise ValueError(f"{name} is listed twice; pass one model per name")
        seen.add(name)
        path, item, model_schemas = _model_parts(model, max_instances)
        # A model's own predict path is the generic one with its name filled in.
        _complete(item["post"], scopes.get(GENERIC_PREDICT))
        paths[path] = item
        schemas.update(model_schemas)
    _name_examples(paths, sorted(seen))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "model-service",
            "version": version,
            "summary": "Serves scikit-learn models from a versioned store.",
            "description": "Every client mistake is a 4xx with a JSON error naming the "
            "instance and the feature. Native errors are "
            '`{"error": {"code", "message", "details", "request_id"}}`; Open Inference '
            'Protocol v2 routes answer `{"error": "..."}` and MLflow routes '
            '`{"error_code", "message"}`. Per-model schemas (`<name>.Instance`, '
            "`<name>.Row`, `<name>.PredictRequest`, `<name>.PredictResponse`) describe the "
            "models served when this document was built: "
            + (", ".join(sorted(seen)) or "none")
            + ".",
        },
        "tags": copy.deepcopy(TAGS),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": copy.deepcopy(fixed_responses),
            "headers": {
                "RequestId": {
                    "description": "The request id (yours if you sent a valid one).",
                    "schema": {"type": "string"},
                },
                "ModelVersion": {
                    "description": "The version that served the prediction.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "ModelVariant": {
                    "description": "In an experiment: the variant that served (an alias "
                    "or a version number, as the experiment was started).",
                    "schema": {"type": "string"},
                },
                "ExperimentId": {
                    "description": "In an experiment: its id.",
                    "schema": {"type": "string"},
                },
            },
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key granting the operation's scope (predict, "
                    "feedback, read or admin), as `Authorization: Bearer <key>`; the "
                    "service stores only its sha256. Operations without `security` need "
                    "no key as this service is configured.",
                }
            },
        },
    }


# --- the HTML page ---------------------------------------------------------------------

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
    stats = feature.get("stats") or {}
    if "min" in stats and "max" in stats:
        training_range = f"{_number_text(stats['min'])} to {_number_text(stats['max'])}"
    else:
        training_range = None
    categories = feature.get("categories")
    return {
        "name": feature["name"],
        "dtype": feature["dtype"],
        "categories": ", ".join(map(str, categories)) if categories else None,
        "unknown": feature.get("unknown_category") if feature["dtype"] == "category" else None,
        "missing": feature.get("missing", "reject"),
        "range": training_range,
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
                    "body": [
                        {
                            "media": media,
                            "schema": _pretty(_inline(document, spec.get("schema", {}))),
                        }
                        for media, spec in (body or {}).get("content", {}).items()
                    ],
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
    ref = response.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[-1]
        target = document["components"]["responses"][name]
        return {
            "status": status,
            "description": target["description"],
            "ref": anchor("response", name),
            "ref_name": name,
            "content": [],
        }
    return {
        "status": status,
        "description": response["description"],
        "ref": None,
        "ref_name": None,
        "content": [
            {"media": media, "schema": _pretty(spec.get("schema", {}))}
            for media, spec in response.get("content", {}).items()
        ],
    }


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
                "content": [
                    {"media": media, "schema": _pretty(spec.get("schema", {}))}
                    for media, spec in response.get("content", {}).items()
                ],
            }
            for name, response in components["responses"].items()
        ],
        anchor=anchor,
    )


@functools.cache
def _template() -> jinja2.Template:
    return pages.environment().get_template("docs.html")
