"""metadata.yaml: its schema, and reading, validating and writing it.

The schema is JSON Schema so that the same document validates the file, can be
published in API docs, and reports mistakes with the path of the bad field.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from service.errors import InvalidMetadata

SCHEMA_VERSION = 1

_number = {"type": "number"}
_metrics = {"type": "object", "additionalProperties": True}
_scores_pair = {
    "type": "object",
    "required": ["model", "baseline"],
    "properties": {"model": _metrics, "baseline": _metrics},
}

FEATURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "dtype", "missing"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "dtype": {"enum": ["float64", "int64", "category"]},
        "missing": {"enum": ["reject", "allow"]},
        "categories": {"type": "array", "items": {"type": ["string", "integer"]}},
        "unknown_category": {"enum": ["reject", "allow"]},
        "handle_unknown": {"enum": ["error", "ignore", "infrequent_if_exist"]},
        "fill_value": {"type": "string"},
        "infrequent_categories": {"type": "array", "items": {"type": "string"}},
        "imputation": {"type": "string"},
        "description": {"type": "string"},
        "stats": {
            "type": "object",
            "properties": {
                "min": _number,
                "max": _number,
                "mean": _number,
                "std": _number,
                "missing_rate": _number,
                "histogram": {
                    "type": "object",
                    "required": ["edges", "counts"],
                    "properties": {
                        "edges": {"type": "array", "items": _number},
                        "counts": {"type": "array", "items": {"type": "integer"}},
                    },
                },
                "category_shares": {"type": "object"},
            },
        },
    },
    "allOf": [
        {
            "if": {"properties": {"dtype": {"const": "category"}}},
            "then": {"required": ["categories", "unknown_category"]},
        }
    ],
}

_file_name = {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*\\Z"}
_sha256 = {"type": "string", "pattern": "^[0-9a-f]{64}\\Z"}

# backends.onnx: the model converted to ONNX and checked against the pickle when it was
# written; served by onnxruntime only while parity.passed holds and the file's sha256 is
# the one recorded. When conversion or parity failed: available false and the reason.
ONNX_BACKEND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["available"],
    "properties": {
        "available": {"type": "boolean"},
        "reason": {"type": "string"},
        "file": _file_name,
        "format": {"const": "onnx"},
        "sha256": _sha256,
        "size": {"type": "integer", "minimum": 1},
        "precision": {"enum": ["double", "float32"]},
        "inputs": {
            "enum": ["matrix", "columns"],
            "description": "matrix: one [N, F] tensor X; columns: one [N, 1] tensor per "
            "feature, named after it",
        },
        "opset": {"type": "object", "additionalProperties": {"type": "integer"}},
        "converter": {"type": "object", "additionalProperties": {"type": "string"}},
        "converted_at": {"type": "string"},
        "failed_attempts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["precision", "error"],
                "properties": {"precision": {"type": "string"}, "error": {"type": "string"}},
            },
        },
        "parity": {
            "type": "object",
            "required": ["rows", "source", "tolerance", "passed"],
            "properties": {
                "rows": {"type": "integer", "minimum": 1},
                "source": {"type": "string"},
                "labels_identical": {"type": "boolean"},
                "label_mismatches": {"type": "integer", "minimum": 0},
                "max_abs_diff": {"type": "object", "additionalProperties": _number},
                "tolerance": {"type": "object", "additionalProperties": _number},
                "passed": {"type": "boolean"},
            },
        },
    },
    "if": {"properties": {"available": {"const": True}}},
    "then": {"required": ["file", "format", "sha256", "size", "precision", "inputs", "parity"]},
    "else": {"required": ["reason"]},
}

# scores.gate: the offline baseline gate of ``modelctl train``. The candidate passes when it
# beats the baseline by more than the margin on the primary metric and a paired bootstrap
# of that lead on the same held-out rows gives a p-value below alpha. Versions published
# before the bootstrap have no significance, alpha or baselines.
_optional_number = {"type": ["number", "null"]}
GATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["metric", "passed"],
    "properties": {
        "metric": {"type": "string"},
        "higher_is_better": {"type": "boolean"},
        "model": _optional_number,
        "baseline": _optional_number,
        "baseline_strategy": {"type": "string"},
        "baseline_chosen_by": {"type": "string"},
        "baselines": {"type": "object", "additionalProperties": _optional_number},
        "improvement": _optional_number,
        "margin": {"type": "number", "minimum": 0},
        "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
        "significance": {
            "type": ["object", "null"],
            "required": ["method", "p_value", "interval", "resamples", "rows", "seed"],
            "properties": {
                "method": {"type": "string"},
                "p_value": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "interval": {
                    "type": "object",
                    "required": ["low", "high", "level"],
                    "properties": {
                        "low": _optional_number,
                        "high": _optional_number,
                        "level": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
                "resamples": {"type": "integer", "minimum": 1},
                "rows": {"type": "integer", "minimum": 1},
                "rows_from": {"enum": ["validation", "out-of-fold"]},
                "seed": {"type": "integer", "minimum": 0},
            },
        },
        "passed": {"type": "boolean"},
        "forced": {"type": "boolean"},
        "reason": {"type": ["string", "null"]},
        "message": {"type": "string"},
    },
}

METADATA_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "model-service metadata.yaml",
    "type": "object",
    "required": [
        "schema_version",
        "name",
        "version",
        "created_at",
        "description",
        "task",
        "target",
        "algorithm",
        "data",
        "input",
        "scores",
        "artifact",
        "environment",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\\Z"},
        "version": {"type": "integer", "minimum": 1},
        "created_at": {"type": "string"},
        "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "task": {"enum": ["classification", "regression"]},
        "target": {"type": "string"},
        "classes": {"type": "array", "items": {"type": ["string", "integer", "boolean"]}},
        "algorithm": {
            "type": "object",
            "required": ["class", "params"],
            "properties": {"class": {"type": "string"}, "params": {"type": "object"}},
        },
        "data": {
            "type": "object",
            "required": ["source", "rows"],
            "properties": {
                "source": {"type": "string"},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}\\Z"},
                "rows": {"type": "object"},
                "split": {"type": "object"},
            },
        },
        "input": {
            "type": "object",
            "required": ["features"],
            "properties": {"features": {"type": "array", "minItems": 1, "items": FEATURE_SCHEMA}},
        },
        "scores": {
            "type": "object",
            "required": ["primary_metric", "validation", "test", "baseline"],
            "properties": {
                "primary_metric": {"type": "string"},
                "validation": _scores_pair,
                "test": _scores_pair,
                "baseline": {"type": "object"},
                "gate": GATE_SCHEMA,
            },
        },
        "golden": {
            "type": "object",
            "required": ["instances", "predictions"],
            "properties": {
                "instances": {"type": "array", "minItems": 1, "items": {"type": "array"}},
                "predictions": {"type": "array", "minItems": 1},
                "probabilities": {"type": ["array", "null"]},
                "tolerance": {
                    "type": "object",
                    "properties": {"rtol": _number, "atol": _number},
                },
            },
        },
        "artifact": {
            "type": "object",
            "required": ["file", "format", "sha256", "size"],
            "properties": {
                "file": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*\\Z"},
                "format": {"const": "pickle"},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}\\Z"},
                "size": {"type": "integer", "minimum": 1},
            },
        },
        "backends": {
            "type": "object",
            "description": "Compiled forms of the model, next to the pickle, and whether they "
            "may serve it.",
            "properties": {"onnx": ONNX_BACKEND_SCHEMA},
        },
        "environment": {
            "type": "object",
            "required": ["python", "scikit-learn", "numpy"],
            "properties": {
                "python": {"type": "string"},
                "scikit-learn": {"type": "string"},
                "numpy": {"type": "string"},
            },
        },
    },
    "allOf": [
        {
            "if": {"properties": {"task": {"const": "classification"}}},
            "then": {"required": ["classes"]},
        }
    ],
}

if TYPE_CHECKING:
    import jsonschema


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    # Built at first use: a store host answers most requests (a manifest, an alias change)
    # without validating metadata, and each request is a new process.
    import jsonschema

    return jsonschema.Draft202012Validator(METADATA_SCHEMA)


def onnx_backend(metadata: dict[str, Any]) -> dict[str, Any]:
    """The version's ``backends.onnx`` entry (its compiled form), or {} when it has none."""
    return (metadata.get("backends") or {}).get("onnx") or {}


def validate(metadata: Any, *, partial: bool = False) -> dict[str, Any]:
    """Raise InvalidMetadata naming every bad field; return the metadata.

    ``partial`` skips the fields the store fills in at publish time
    (version, created_at, artifact, environment).
    """
    if not isinstance(metadata, dict):
        raise InvalidMetadata("metadata must be a mapping")
    problems = []
    for error in sorted(_validator().iter_errors(metadata), key=lambda e: list(e.absolute_path)):
        if partial and _is_filled_at_publish(error):
            continue
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        problems.append({"field": where, "problem": error.message})
    names = [f.get("name") for f in metadata.get("input", {}).get("features", []) or []]
    duplicates = sorted({n for n in names if names.count(n) > 1 and n is not None})
    if duplicates:
        problems.append({"field": "input/features", "problem": f"duplicate names {duplicates}"})
    if problems:
        first = problems[0]
        raise InvalidMetadata(
            f"metadata is invalid: {first['field']}: {first['problem']}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            details=problems,
        )
    return metadata


_FILLED_AT_PUBLISH = {"version", "created_at", "artifact", "environment", "name"}


def _is_filled_at_publish(error: jsonschema.ValidationError) -> bool:
    if error.validator == "required" and not error.absolute_path:
        missing = error.message.split("'")[1] if "'" in error.message else ""
        return missing in _FILLED_AT_PUBLISH
    return bool(error.absolute_path) and error.absolute_path[0] in _FILLED_AT_PUBLISH


def read(path: Path) -> dict[str, Any]:
    return parse(Path(path).read_text(encoding="utf-8"), path)


def parse(text: str | bytes, path: Path) -> dict[str, Any]:
    """A metadata file's contents (``path`` names it in the error), e.g. as read already
    by the signature check."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidMetadata(f"{path}: not valid YAML: {exc}") from None


def dump(metadata: dict[str, Any]) -> str:
    return yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=100)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write through a temporary file and os.replace, so readers never see half a file."""
    path = Path(path)
    data = text.encode() if isinstance(text, str) else text
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; every worker user must read the store
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
