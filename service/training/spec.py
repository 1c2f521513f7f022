"""The training spec: a YAML file that says what to learn, from which data, and how to judge it.

Checking happens in two passes, both before anything is fitted: the shape of the
file against a JSON Schema here (so each mistake names its field), then the
spec against the data (columns, classes, estimator) in ``checks.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from service.errors import InvalidSpec
from service.store.layout import check_name
from service.training.evaluation import BASELINE_STRATEGIES, SCORERS

IMPUTE_NUMERIC = ("mean", "median", "most_frequent", "constant", "none")
IMPUTE_CATEGORICAL = ("constant", "most_frequent", "none")
HANDLE_UNKNOWN = ("ignore", "infrequent_if_exist", "error")
MISSING_CATEGORY = "missing"

_columns = {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True}
_scalar = {"type": ["string", "number", "boolean", "null"]}
_fraction = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
_numeric_options = {
    "impute": {"enum": list(IMPUTE_NUMERIC)},
    "fill_value": {"type": "number"},
    "scale": {"enum": ["standard", "none"]},
}
_categorical_options = {
    "impute": {"enum": list(IMPUTE_CATEGORICAL)},
    "fill_value": {"type": "string", "minLength": 1},
    "handle_unknown": {"enum": list(HANDLE_UNKNOWN)},
    "min_frequency": {"type": "number", "exclusiveMinimum": 0},
    "max_categories": {"type": "integer", "minimum": 2},
}


def _kind_block(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "oneOf": [
            _columns,
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {"columns": _columns, **options},
            },
        ]
    }


SPEC_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "modelctl train spec",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "task", "target", "data", "estimator"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "task": {"enum": ["classification", "regression"]},
        "target": {"type": "string", "minLength": 1},
        "drop": _columns,
        "data": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "path": {"type": "string", "minLength": 1},
                "format": {"enum": ["csv", "parquet"]},
                "separator": {"type": "string", "minLength": 1},
                "na_values": {"type": "array", "items": {"type": "string"}},
                "drop": _columns,
                "sklearn": {"enum": ["iris", "wine", "breast_cancer", "diabetes", "digits"]},
                "options": {"type": "object"},
            },
            "oneOf": [{"required": ["path"]}, {"required": ["sklearn"]}],
        },
        "features": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "numeric": _kind_block(_numeric_options),
                "categorical": _kind_block(_categorical_options),
                "text": {"enum": ["drop", "categorical"]},
                "columns": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            **_numeric_options,
                            **_categorical_options,
                            "fill_value": {"type": ["string", "number"]},
                            "dtype": {"enum": ["float64", "int64"]},
                            "missing": {"enum": ["allow", "reject"]},
                        },
                    },
                },
            },
        },
        "estimator": {
            "type": "object",
            "additionalProperties": False,
            "required": ["class"],
            "properties": {
                "class": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*\Z"},
                "params": {"type": "object"},
                "search": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["params"],
                    "properties": {
                        "kind": {"enum": ["grid", "randomized"]},
                        "params": {"type": "object", "minProperties": 1},
                        "folds": {"type": "integer", "minimum": 2, "maximum": 20},
                        "n_iter": {"type": "integer", "minimum": 1},
                    },
                },
            },
        },
        "evaluation": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "method": {"enum": ["holdout", "cross_validation"]},
                "test_size": _fraction,
                "validation_size": _fraction,
                "folds": {"type": "integer", "minimum": 2, "maximum": 20},
                "seed": {"type": "integer", "minimum": 0},
                "primary_metric": {"type": "string"},
                "margin": {"type": "number", "minimum": 0},
                "baseline": {"type": "string"},
                "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
                "stratify": {"type": "boolean"},
            },
        },
    },
}

_validator = jsonschema.Draft202012Validator(SPEC_SCHEMA)


@dataclasses.dataclass(frozen=True)
class NumericTreatment:
    impute: str = "median"
    fill_value: float = 0.0
    scale: str = "standard"


@dataclasses.dataclass(frozen=True)
class CategoricalTreatment:
    impute: str = "constant"
    fill_value: str = MISSING_CATEGORY
    handle_unknown: str = "infrequent_if_exist"
    min_frequency: float | None = None
    max_categories: int | None = None


@dataclasses.dataclass(frozen=True)
class Evaluation:
    method: str = "holdout"
    test_size: float = 0.2
    validation_size: float = 0.2
    folds: int = 5
    seed: int = 0
    primary_metric: str = ""
    margin: float = 0.0
    baseline: str = ""  # none: the strongest Dummy strategy on the validation rows
    alpha: float = 0.05  # the lead over the baseline must have a p-value below it
    stratify: bool = True


@dataclasses.dataclass(frozen=True)
class Search:
    kind: str
    params: dict[str, Any]
    folds: int
    n_iter: int


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
    """A checked spec, defaults filled in. Column lists may still be empty: the
    data decides them (``checks.plan_features``)."""

    name: str
    task: str
    target: str
    description: str
    tags: tuple[str, ...]
    data: dict[str, Any]
    data_path: Path | None
    drop: tuple[str, ...]
    numeric_columns: tuple[str, ...] | None
    categorical_columns: tuple[str, ...] | None
    numeric: NumericTreatment
    categorical: CategoricalTreatment
    column_options: dict[str, dict[str, Any]]
    text: str
    estimator_class: str
    estimator_params: dict[str, Any]
    search: Search | None
    evaluation: Evaluation
    source_text: dict[str, Any]  # the spec as written, for the metadata
    spec_file: Path | None = None

    @property
    def classification(self) -> bool:
        return self.task == "classification"


def load(path: str | Path) -> TrainingSpec:
    """Read and check a spec file; data paths are relative to the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"{path}: not valid YAML: {exc}") from None
    return parse(raw, base_dir=path.parent, spec_file=path)


def parse(raw: Any, *, base_dir: Path, spec_file: Path | None = None) -> TrainingSpec:
    if not isinstance(raw, dict):
        raise InvalidSpec("the spec must be a YAML mapping")
    _check_shape(raw)
    try:
        check_name(raw["name"])
    except Exception as exc:
        raise InvalidSpec(f"name: {exc}", field="name") from None
    task = raw["task"]
    features = raw.get("features") or {}
    numeric_block, numeric_columns = _kind(features.get("numeric"))
    categorical_block, categorical_columns = _kind(features.get("categorical"))
    evaluation = _evaluation(task, raw.get("evaluation") or {})
    estimator = raw["estimator"]
    data = dict(raw["data"])
    data_path = None
    if "path" in data:
        data_path = (base_dir / data["path"]).resolve()
    drop = tuple(raw.get("drop") or ()) + tuple(data.get("drop") or ())
    search = None
    if "search" in estimator:
        block = estimator["search"]
        search = Search(
            kind=block.get("kind", "grid"),
            params=dict(block["params"]),
            folds=int(block.get("folds", evaluation.folds)),
            n_iter=int(block.get("n_iter", 10)),
        )
    return TrainingSpec(
        name=raw["name"],
        task=task,
        target=raw["target"],
        description=raw.get("description") or "",
        tags=tuple(raw.get("tags") or ()),
        data=data,
        data_path=data_path,
        drop=drop,
        numeric_columns=numeric_columns,
        categorical_columns=categorical_columns,
        numeric=NumericTreatment(**numeric_block),
        categorical=CategoricalTreatment(**categorical_block),
        column_options=dict(features.get("columns") or {}),
        text=features.get("text", "drop"),
        estimator_class=estimator["class"],
        estimator_params=dict(estimator.get("params") or {}),
        search=search,
        evaluation=evaluation,
        source_text=raw,
        spec_file=spec_file,
    )


def _check_shape(raw: dict[str, Any]) -> None:
    errors = sorted(_validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), e.message))
    if not errors:
        return
    # The deepest error says most about what is wrong ("oneOf" failures wrap the real one).
    error = errors[-1] if errors[-1].absolute_path else errors[0]
    best = jsonschema.exceptions.best_match([error]) or error
    field = ".".join(str(p) for p in best.absolute_path) or "(top level)"
    message = best.message
    if best.validator == "additionalProperties":
        message = message.replace("Additional properties are not allowed", "unknown field(s)")
    raise InvalidSpec(
        f"spec field {field}: {message}",
        field=field,
        details=[
            {
                "field": ".".join(str(p) for p in e.absolute_path) or "(top level)",
                "problem": e.message,
            }
            for e in errors
        ],
    )


def _kind(block: Any) -> tuple[dict[str, Any], tuple[str, ...] | None]:
    if block is None:
        return {}, None
    if isinstance(block, list):
        return {}, tuple(block)
    options = {k: v for k, v in block.items() if k != "columns"}
    columns = tuple(block["columns"]) if "columns" in block else None
    return options, columns


def _evaluation(task: str, block: dict[str, Any]) -> Evaluation:
    metric = block.get("primary_metric") or ("f1_macro" if task == "classification" else "r2")
    if metric not in SCORERS[task]:
        other = "regression" if task == "classification" else "classification"
        fits_other = " (that is a " + other + " metric)" if metric in SCORERS[other] else ""
        raise InvalidSpec(
            f"spec field evaluation.primary_metric: {metric!r} does not fit a {task} task"
            f"{fits_other}; choose one of {', '.join(SCORERS[task])}",
            field="evaluation.primary_metric",
        )
    baseline = block.get("baseline") or ""
    if baseline and baseline not in BASELINE_STRATEGIES[task]:
        raise InvalidSpec(
            f"spec field evaluation.baseline: {baseline!r} is not a {task} baseline; choose one "
            f"of {', '.join(BASELINE_STRATEGIES[task])}",
            field="evaluation.baseline",
        )
    test_size = block.get("test_size", 0.2)
    validation_size = block.get("validation_size", 0.2)
    if test_size + validation_size >= 0.9:
        raise InvalidSpec(
            "spec field evaluation.validation_size: test_size + validation_size must leave at "
            f"least 10% of the rows to train on (they add up to {test_size + validation_size:g})",
            field="evaluation.validation_size",
        )
    return Evaluation(
        method=block.get("method", "holdout"),
        test_size=test_size,
        validation_size=validation_size,
        folds=block.get("folds", 5),
        seed=block.get("seed", 0),
        primary_metric=metric,
        margin=float(block.get("margin", 0.0)),
        baseline=baseline,
        alpha=float(block.get("alpha", 0.05)),
        stratify=block.get("stratify", True),
    )
