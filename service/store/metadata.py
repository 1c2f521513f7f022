"""metadata.yaml: its schema, and reading, validating and writing it.

The schema is JSON Schema so that the same document validates the file, can be
published in API docs, and reports mistakes with the path of the bad field.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from service.errors import InvalidMetadata

SCHEMA_VERSION = 1

_number = {"type": "number"}
_metrics = {"type": "object", "additionalProperties": True}


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A shared sub-schema with the description of one place it is used."""
    return {**schema, "description": description}


def _scores_pair(rows: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"The model's and the baseline's metrics on the {rows} rows. "
        "Classification: accuracy, balanced accuracy, precision / recall / F1 (macro), "
        "ROC-AUC, false-positive and false-negative rates (overall and per class), confusion "
        "matrix. Regression: MAE, MSE, RMSE, R².",
        "required": ["model", "baseline"],
        "properties": {
            "model": _described(_metrics, "The model's metrics, by name."),
            "baseline": _described(_metrics, "The baseline's metrics on the same rows."),
        },
    }


FEATURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One input feature; requests give the features in this order.",
    "required": ["name", "dtype", "missing"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "description": "The feature's name."},
        "dtype": {
            "enum": ["float64", "int64", "category"],
            "description": "The type a request's value must have (category: a string or an "
            "integer label).",
        },
        "missing": {
            "enum": ["reject", "allow"],
            "description": "Whether a request may leave the value out (null); allow: the "
            "model imputes it.",
        },
        "categories": {
            "type": "array",
            "items": {"type": ["string", "integer"]},
            "description": "The categories seen in training (category features).",
        },
        "unknown_category": {
            "enum": ["reject", "allow"],
            "description": "What a request with a category not in categories gets: a 4xx "
            "(reject), or a prediction (allow).",
        },
        "handle_unknown": {
            "enum": ["error", "ignore", "infrequent_if_exist"],
            "description": "The encoder's handle_unknown the model was trained with.",
        },
        "fill_value": {
            "type": "string",
            "description": "The category a missing value is replaced with.",
        },
        "infrequent_categories": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Categories the encoder groups together as infrequent.",
        },
        "imputation": {
            "type": "string",
            "description": "How a missing value is filled in (none, mean, median, "
            "most_frequent, constant and its value).",
        },
        "description": {"type": "string", "description": "What the feature means."},
        "stats": {
            "type": "object",
            "description": "Statistics of the rows the final model learned from, the "
            "reference for drift.",
            "properties": {
                "min": _described(_number, "Smallest value."),
                "max": _described(_number, "Largest value."),
                "mean": _described(_number, "Mean value."),
                "std": _described(_number, "Standard deviation."),
                "missing_rate": _described(_number, "Share of rows without a value."),
                "histogram": {
                    "type": "object",
                    "description": "Histogram of the values (numeric features).",
                    "required": ["edges", "counts"],
                    "properties": {
                        "edges": {
                            "type": "array",
                            "items": _number,
                            "description": "Bin edges, one more than the bins.",
                        },
                        "counts": {
                            "type": "array",
                            "items": {"type": "integer"},
                            "description": "Rows in each bin.",
                        },
                    },
                },
                "category_shares": {
                    "type": "object",
                    "description": "Share of rows of each category (category features).",
                },
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

ONNX_BACKEND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The model converted to ONNX and checked against the pickle when it was "
    "written; served by onnxruntime only while parity.passed holds and the file's sha256 is "
    "the one recorded.",
    "required": ["available"],
    "properties": {
        "available": {
            "type": "boolean",
            "description": "Whether the ONNX form exists and matched the pickle.",
        },
        "reason": {
            "type": "string",
            "description": "Why there is no ONNX form (conversion or parity failed).",
        },
        "file": _described(_file_name, "The ONNX file next to the pickle (model.onnx)."),
        "format": {"const": "onnx", "description": "Always onnx."},
        "sha256": _described(_sha256, "sha256 of the ONNX file, checked before it is loaded."),
        "size": {"type": "integer", "minimum": 1, "description": "Its size in bytes."},
        "precision": {
            "enum": ["double", "float32"],
            "description": "The floating-point type the ONNX graph computes in.",
        },
        "inputs": {
            "enum": ["matrix", "columns"],
            "description": "matrix: one [N, F] tensor X; columns: one [N, 1] tensor per "
            "feature, named after it",
        },
        "opset": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "The ONNX operator set version of each domain the graph uses.",
        },
        "converter": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Versions of the packages that converted the model.",
        },
        "converted_at": {
            "type": "string",
            "description": "UTC ISO-8601 time of the conversion.",
        },
        "failed_attempts": {
            "type": "array",
            "description": "The precisions tried before (or instead of) the one that "
            "worked, and why each failed.",
            "items": {
                "type": "object",
                "required": ["precision", "error"],
                "properties": {
                    "precision": {"type": "string", "description": "The precision tried."},
                    "error": {"type": "string", "description": "Why it failed."},
                },
            },
        },
        "parity": {
            "type": "object",
            "description": "How the ONNX outputs compared with the pickle's on the same rows.",
            "required": ["rows", "source", "tolerance", "passed"],
            "properties": {
                "rows": {"type": "integer", "minimum": 1, "description": "Rows compared."},
                "source": {"type": "string", "description": "Where the rows came from."},
                "labels_identical": {
                    "type": "boolean",
                    "description": "Whether every predicted label was the same (classifiers).",
                },
                "label_mismatches": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Rows whose predicted label differed (classifiers).",
                },
                "max_abs_diff": {
                    "type": "object",
                    "additionalProperties": _number,
                    "description": "Largest absolute difference of the probabilities "
                    "(classifiers) or predictions (regressors).",
                },
                "tolerance": {
                    "type": "object",
                    "additionalProperties": _number,
                    "description": "The largest difference allowed (atol, and for regressors "
                    "the relative tolerance and the scale it applies to).",
                },
                "passed": {
                    "type": "boolean",
                    "description": "Whether the ONNX form matched within the tolerance.",
                },
            },
        },
    },
    "if": {"properties": {"available": {"const": True}}},
    "then": {"required": ["file", "format", "sha256", "size", "precision", "inputs", "parity"]},
    "else": {"required": ["reason"]},
}

_optional_number = {"type": ["number", "null"]}
GATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The baseline gate of modelctl train: the candidate passes when it beats "
    "the baseline by more than the margin on the primary metric and a paired bootstrap of "
    "that lead on the same held-out rows gives a p-value below alpha. Versions published "
    "before the bootstrap have no significance, alpha or baselines.",
    "required": ["metric", "passed"],
    "properties": {
        "metric": {"type": "string", "description": "The metric compared (the primary one)."},
        "higher_is_better": {
            "type": "boolean",
            "description": "Whether a higher value of the metric is better.",
        },
        "model": _described(_optional_number, "The candidate's validation score."),
        "baseline": _described(_optional_number, "The baseline's validation score."),
        "baseline_strategy": {
            "type": "string",
            "description": "The baseline compared against (a DummyClassifier or "
            "DummyRegressor strategy).",
        },
        "baseline_chosen_by": {
            "type": "string",
            "description": "How that baseline was chosen: named in the spec, or the "
            "strongest of baselines.",
        },
        "baselines": {
            "type": "object",
            "additionalProperties": _optional_number,
            "description": "Every baseline strategy's validation score.",
        },
        "improvement": _described(
            _optional_number, "The candidate's lead over the baseline (positive: better)."
        ),
        "margin": {
            "type": "number",
            "minimum": 0,
            "description": "The lead the candidate must exceed.",
        },
        "alpha": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 0.5,
            "description": "The significance level the p-value must be below.",
        },
        "significance": {
            "type": ["object", "null"],
            "description": "The paired bootstrap of the lead; null when there was nothing "
            "to compare.",
            "required": ["method", "p_value", "interval", "resamples", "rows", "seed"],
            "properties": {
                "method": {"type": "string", "description": "The test, in words."},
                "p_value": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 1,
                    "description": "Chance of a lead this large if the candidate were no "
                    "better than the baseline plus the margin.",
                },
                "interval": {
                    "type": "object",
                    "description": "Confidence interval of the lead.",
                    "required": ["low", "high", "level"],
                    "properties": {
                        "low": _described(_optional_number, "Its lower end."),
                        "high": _described(_optional_number, "Its upper end."),
                        "level": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "description": "Its confidence level.",
                        },
                    },
                },
                "resamples": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Bootstrap resamples drawn.",
                },
                "rows": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Held-out rows resampled.",
                },
                "rows_from": {
                    "enum": ["validation", "out-of-fold"],
                    "description": "Which held-out rows: the validation split, or the "
                    "out-of-fold predictions of cross-validation.",
                },
                "seed": {"type": "integer", "minimum": 0, "description": "The random seed."},
            },
        },
        "passed": {"type": "boolean", "description": "Whether the candidate passed."},
        "forced": {
            "type": "boolean",
            "description": "Whether it was published anyway (modelctl train --force).",
        },
        "reason": {
            "type": ["string", "null"],
            "description": "The reason given with --force.",
        },
        "message": {"type": "string", "description": "The verdict in words."},
    },
}

METADATA_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "model-service metadata.yaml",
    "description": "Everything a person needs to trust one version of a model: what it "
    "is for, what it was trained on, how it scored against a baseline, and the checksums "
    "the store verifies before it unpickles it.",
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
        "schema_version": {
            "const": SCHEMA_VERSION,
            "description": "Format version of this file.",
        },
        "name": {
            "type": "string",
            "pattern": "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\\Z",
            "description": "The model's name: lowercase letters, digits and '-' (filled in "
            "by publish).",
        },
        "version": {
            "type": "integer",
            "minimum": 1,
            "description": "The version number; never reused (filled in by publish).",
        },
        "created_at": {
            "type": "string",
            "description": "UTC ISO-8601 time of publishing (filled in by publish).",
        },
        "description": {"type": "string", "description": "What the model is for."},
        "tags": {"type": "array", "items": {"type": "string"}, "description": "Free labels."},
        "task": {
            "enum": ["classification", "regression"],
            "description": "What the model predicts: a class or a number.",
        },
        "target": {"type": "string", "description": "Name of the predicted column."},
        "classes": {
            "type": "array",
            "items": {"type": ["string", "integer", "boolean"]},
            "description": "Class labels in the estimator's order.",
        },
        "algorithm": {
            "type": "object",
            "description": "The estimator and all its parameters.",
            "required": ["class", "params"],
            "properties": {
                "class": {"type": "string", "description": "The estimator's class path."},
                "params": {"type": "object", "description": "Its parameters."},
                "steps": {
                    "type": "array",
                    "description": "For a Pipeline, each step with its name, class and parameters.",
                },
            },
        },
        "data": {
            "type": "object",
            "description": "What the model was trained on.",
            "required": ["source", "rows"],
            "properties": {
                "source": {"type": "string", "description": "Where the data came from."},
                "sha256": _described(_sha256, "sha256 of the training data."),
                "files": {
                    "type": "array",
                    "description": "Each data file with its sha256.",
                },
                "rows": {
                    "type": "object",
                    "description": "Row counts: total, train, validation, test, rows dropped "
                    "for a missing target.",
                },
                "split": {
                    "type": "object",
                    "description": "How the rows were split: method, fractions, seed, what "
                    "the final model was fitted on.",
                },
            },
        },
        "input": {
            "type": "object",
            "description": "What a request must send.",
            "required": ["features"],
            "properties": {
                "features": {
                    "type": "array",
                    "minItems": 1,
                    "items": FEATURE_SCHEMA,
                    "description": "The features, in order.",
                }
            },
        },
        "scores": {
            "type": "object",
            "description": "How the model scored, next to a baseline on the same rows.",
            "required": ["primary_metric", "validation", "test", "baseline"],
            "properties": {
                "primary_metric": {
                    "type": "string",
                    "description": "The metric the model is judged by (the baseline gate, "
                    "the promotion gate).",
                },
                "method": {
                    "type": "string",
                    "description": "How the scores were measured (holdout or cross-validation).",
                },
                "validation": _scores_pair("validation"),
                "test": _scores_pair("test"),
                "baseline": {
                    "type": "object",
                    "description": "The baseline estimator (a DummyClassifier or "
                    "DummyRegressor) with its parameters.",
                },
                "gate": GATE_SCHEMA,
            },
        },
        "golden": {
            "type": "object",
            "description": "A few input rows and what the model answered at training time; "
            "a version whose outputs differ when it is loaded is not served.",
            "required": ["instances", "predictions"],
            "properties": {
                "instances": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "array"},
                    "description": "The input rows.",
                },
                "predictions": {
                    "type": "array",
                    "minItems": 1,
                    "description": "The predictions they gave.",
                },
                "probabilities": {
                    "type": ["array", "null"],
                    "description": "The class probabilities they gave (classifiers).",
                },
                "tolerance": {
                    "type": "object",
                    "description": "How far floats may be from the recorded ones.",
                    "properties": {
                        "rtol": _described(_number, "Relative tolerance."),
                        "atol": _described(_number, "Absolute tolerance."),
                    },
                },
            },
        },
        "training": {
            "type": "object",
            "description": "How modelctl train made this version: the spec as written, "
            "durations, warnings, dropped columns, the hyperparameter search and a forced "
            "publish's reason.",
        },
        "artifact": {
            "type": "object",
            "description": "The pickle, checked before it is unpickled (filled in by publish).",
            "required": ["file", "format", "sha256", "size"],
            "properties": {
                "file": _described(_file_name, "The pickle's file name (model.pkl)."),
                "format": {"const": "pickle", "description": "Always pickle."},
                "sha256": _described(_sha256, "sha256 of the pickle."),
                "size": {"type": "integer", "minimum": 1, "description": "Its size in bytes."},
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
            "description": "The versions that wrote the pickle (filled in by publish); a "
            "model is served by the same scikit-learn or with a warning.",
            "required": ["python", "scikit-learn", "numpy"],
            "properties": {
                "python": {"type": "string", "description": "Python version."},
                "scikit-learn": {"type": "string", "description": "scikit-learn version."},
                "numpy": {"type": "string", "description": "numpy version."},
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
