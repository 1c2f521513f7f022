"""The spec checked against its data: which columns are features of which kind, how
each is treated, and the rows to learn from. Everything here runs before any fit,
so a mistake costs seconds, not a training run."""

from __future__ import annotations

import dataclasses
import difflib
import logging
from typing import Any

import numpy as np
import pandas as pd

from service.errors import InvalidData, InvalidSpec
from service.training.spec import TrainingSpec

log = logging.getLogger(__name__)

# A string column is free text (names, comments) rather than a category when it has
# more than this many distinct values and most of its values are distinct.
FREE_TEXT_MIN_DISTINCT = 20
FREE_TEXT_DISTINCT_SHARE = 0.5
MIN_ROWS_PER_CLASS = 5
MIN_ROWS = 20
# Listing columns under features.numeric or features.categorical makes the lists (and
# features.columns) the whole feature set.
NOT_LISTED = "not listed among the features"


@dataclasses.dataclass(frozen=True)
class FeaturePlan:
    name: str
    kind: str  # numeric | categorical
    dtype: str  # float64 | int64 | category
    impute: str
    fill_value: Any
    scale: str = "none"
    handle_unknown: str = "error"
    min_frequency: float | None = None
    max_categories: int | None = None
    missing: str = "allow"


@dataclasses.dataclass
class Plan:
    features: list[FeaturePlan]
    X: pd.DataFrame  # features in order: numbers as float64, categories as strings
    y: pd.Series
    missing: pd.DataFrame  # where each feature was missing in the data, before filling
    rows_total: int
    dropped_missing_target: int
    dropped_columns: list[dict[str, str]]
    warnings: list[str]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]


def make(spec: TrainingSpec, frame: pd.DataFrame) -> Plan:
    columns = list(frame.columns)
    _require_columns(spec.target, [spec.target], columns, "target")
    _require_columns("drop", spec.drop, columns, "drop")
    for kind, listed in (
        ("numeric", spec.numeric_columns),
        ("categorical", spec.categorical_columns),
    ):
        _require_columns(f"features.{kind}", listed or (), columns, f"features.{kind}")
        if spec.target in (listed or ()):
            raise InvalidSpec(
                f"spec field features.{kind}: the target {spec.target!r} cannot be a feature",
                field=f"features.{kind}",
            )
    _require_columns("features.columns", spec.column_options, columns, "features.columns")
    both = set(spec.numeric_columns or ()) & set(spec.categorical_columns or ())
    if both:
        raise InvalidSpec(
            f"spec field features: {sorted(both)} listed as both numeric and categorical",
            field="features",
        )

    rows_total = len(frame)
    target = frame[spec.target]
    missing_target = target.isna()
    frame = frame.loc[~missing_target].reset_index(drop=True)
    y = _target(spec, frame[spec.target])

    warnings: list[str] = []
    dropped = [{"column": c, "reason": "dropped by the spec"} for c in spec.drop]
    features: list[FeaturePlan] = []
    for column in columns:
        if column == spec.target or column in spec.drop:
            continue
        kind, why_dropped = _kind(spec, frame[column], column)
        if why_dropped:
            dropped.append({"column": column, "reason": why_dropped})
            if why_dropped != NOT_LISTED:
                warnings.append(f"column {column!r} dropped: {why_dropped}")
            continue
        features.append(_treatment(spec, frame[column], column, kind))
    if not features:
        raise InvalidSpec("spec field features: no feature columns are left", field="features")
    if len(frame) < MIN_ROWS:
        raise InvalidData(
            f"only {len(frame)} rows have a target; at least {MIN_ROWS} are needed",
            field="data",
        )
    for unused in set(spec.column_options) - {f.name for f in features}:
        raise InvalidSpec(
            f"spec field features.columns.{unused}: the column is not a feature "
            "(it is the target, or dropped)",
            field=f"features.columns.{unused}",
        )
    X = pd.DataFrame({f.name: _prepared(frame[f.name], f) for f in features})
    for warning in warnings:  # returned to the caller too, which shows them to people
        log.info("%s: %s", spec.name, warning)
    return Plan(
        features=features,
        X=X,
        y=y,
        missing=frame[[f.name for f in features]].isna(),
        rows_total=rows_total,
        dropped_missing_target=int(missing_target.sum()),
        dropped_columns=dropped,
        warnings=warnings,
    )


def _require_columns(field: str, wanted, columns: list[str], where: str) -> None:
    for name in wanted:
        if name not in columns:
            close = difflib.get_close_matches(str(name), [str(c) for c in columns], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidSpec(
                f"spec field {where}: the data has no column {name!r}{hint} "
                f"(columns: {', '.join(map(str, columns))})",
                field=where,
            )


def _target(spec: TrainingSpec, target: pd.Series) -> pd.Series:
    if spec.classification:
        if target.dtype == object or isinstance(target.dtype, pd.StringDtype):
            target = target.astype(str)
        elif pd.api.types.is_float_dtype(target) and (target == target.round()).all():
            target = target.astype(np.int64)  # 0.0/1.0 labels read from a CSV
        counts = target.value_counts()
        if len(counts) < 2:
            only = f" (only {counts.index[0]!r})" if len(counts) else ""
            raise InvalidData(
                f"spec field target: {spec.target!r} has {len(counts)} class{only}; "
                "a classifier needs at least two",
                field="target",
            )
        needed = max(MIN_ROWS_PER_CLASS, spec.evaluation.folds + 2)
        rare = counts[counts < needed]
        if len(rare):
            raise InvalidData(
                f"spec field target: too few rows for class {rare.index[0]!r} ({rare.iloc[0]}); "
                f"each class needs at least {needed} to appear in every split",
                field="target",
            )
        return target
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        raise InvalidData(
            f"spec field target: {spec.target!r} is not numeric (dtype {target.dtype}); "
            "a regression needs a numeric target",
            field="target",
        )
    return target.astype(np.float64)


def _kind(spec: TrainingSpec, values: pd.Series, column: str) -> tuple[str, str | None]:
    """The column's kind, or why it is left out."""
    if column in (spec.numeric_columns or ()):
        if not pd.api.types.is_numeric_dtype(values):
            raise InvalidData(
                f"spec field features.numeric: column {column!r} is not numeric "
                f"(dtype {values.dtype}, e.g. {values.dropna().iloc[0]!r})",
                field="features.numeric",
            )
        return "numeric", None
    if column in (spec.categorical_columns or ()):
        return "categorical", None
    listed = (spec.numeric_columns is not None) or (spec.categorical_columns is not None)
    if listed and column not in spec.column_options:
        return "", NOT_LISTED
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        present = values.dropna()
        distinct = present.nunique()
        free_text = distinct > FREE_TEXT_MIN_DISTINCT and distinct > FREE_TEXT_DISTINCT_SHARE * len(
            present
        )
        if free_text and spec.text == "drop":
            return "", (
                f"looks like free text ({distinct} distinct values in {len(present)} rows); "
                "list it under features.categorical or set features.text: categorical to keep it"
            )
        return "categorical", None
    if values.isna().all():
        return "", "has no values"
    return "numeric", None


def _treatment(spec: TrainingSpec, values: pd.Series, column: str, kind: str) -> FeaturePlan:
    options = spec.column_options.get(column, {})
    field = f"features.columns.{column}"
    has_missing = bool(values.isna().any())
    if kind == "numeric":
        base = spec.numeric
        impute = options.get("impute", base.impute)
        dtype = options.get("dtype") or (
            "int64" if pd.api.types.is_integer_dtype(values) else "float64"
        )
        if dtype == "int64":
            present = values.dropna().astype(np.float64)
            if not (present == present.round()).all():
                raise InvalidData(
                    f"spec field {field}.dtype: column {column!r} has non-integer values",
                    field=f"{field}.dtype",
                )
        fill_value = options.get("fill_value", base.fill_value)
        if not isinstance(fill_value, (int, float)):
            raise InvalidSpec(f"spec field {field}.fill_value: must be a number", field=field)
        plan = FeaturePlan(
            name=column,
            kind="numeric",
            dtype=dtype,
            impute=impute,
            fill_value=float(fill_value),
            scale=options.get("scale", base.scale),
            missing=options.get("missing", "reject" if impute == "none" else "allow"),
        )
    else:
        base = spec.categorical
        impute = options.get("impute", base.impute)
        present = values.dropna().astype(str)
        if impute == "most_frequent":
            # The most frequent category of the rows the model learns from.
            fill_value = present.mode().iloc[0] if len(present) else base.fill_value
        else:
            fill_value = str(options.get("fill_value", base.fill_value))
        plan = FeaturePlan(
            name=column,
            kind="categorical",
            dtype="category",
            impute=impute,
            fill_value=fill_value,
            handle_unknown=options.get("handle_unknown", base.handle_unknown),
            min_frequency=options.get("min_frequency", base.min_frequency),
            max_categories=options.get("max_categories", base.max_categories),
            missing=options.get("missing", "reject" if impute == "none" else "allow"),
        )
    if plan.impute == "none" and has_missing:
        raise InvalidData(
            f"spec field {field}.impute: column {column!r} has {int(values.isna().sum())} missing "
            "values but imputation is 'none'",
            field=f"{field}.impute",
        )
    return plan


def _prepared(values: pd.Series, feature: FeaturePlan) -> pd.Series:
    """The column as the model sees it at serving time (see runtime/schema.py)."""
    if feature.kind == "numeric":
        return values.astype(np.float64)
    text = values.map(_category_text, na_action="ignore")
    if feature.impute == "none":
        return text.astype(object)
    # Missing categories become a category of their own (or the most frequent one) before
    # encoding: a string the one-hot encoder, and its ONNX conversion, both understand.
    return text.fillna(feature.fill_value).astype(object)


def _category_text(value: Any) -> str:
    """Categories are strings: 2 and 2.0 read from a CSV both become '2'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
