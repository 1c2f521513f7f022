"""The split of a spec's rows into train, validation and test, made once with the seed,
and its rows as request instances.

Training fits and scores on it; ``optimize`` checks the compiled form's parity on the rows
it held out, and tests and benchmarks replay them: all of them split exactly alike.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from service.training import data as data_io
from service.training import plan as planning
from service.training.spec import TrainingSpec


@dataclasses.dataclass
class Split:
    X_train: pd.DataFrame
    y_train: pd.Series
    X_validation: pd.DataFrame | None
    y_validation: pd.Series | None
    X_rest: pd.DataFrame  # train + validation: what the final model learns from
    y_rest: pd.Series
    X_test: pd.DataFrame
    y_test: pd.Series


def prepare(spec: TrainingSpec) -> tuple[planning.Plan, Split]:
    """The checked rows of a spec and their split, exactly as a training run makes them."""
    plan = planning.make(spec, data_io.read(spec).frame)
    return plan, split_rows(spec, plan)


def split_rows(spec: TrainingSpec, plan: planning.Plan) -> Split:
    evaluation_spec = spec.evaluation
    stratify = spec.classification and evaluation_spec.stratify
    X_rest, X_test, y_rest, y_test = train_test_split(
        plan.X,
        plan.y,
        test_size=evaluation_spec.test_size,
        random_state=evaluation_spec.seed,
        stratify=plan.y if stratify else None,
    )
    if evaluation_spec.method == "cross_validation":
        return Split(X_rest, y_rest, None, None, X_rest, y_rest, X_test, y_test)
    X_train, X_val, y_train, y_val = train_test_split(
        X_rest,
        y_rest,
        test_size=evaluation_spec.validation_size / (1 - evaluation_spec.test_size),
        random_state=evaluation_spec.seed,
        stratify=y_rest if stratify else None,
    )
    return Split(X_train, y_train, X_val, y_val, X_rest, y_rest, X_test, y_test)


def held_out_instances(plan: planning.Plan, split: Split) -> tuple[list[list[Any]], str]:
    """The rows held out from the first fit as request instances, and which split they
    are: the validation split, or the test split when validation was cross-validated."""
    if split.X_validation is not None and len(split.X_validation):
        rows, name = split.X_validation, "validation"
    else:
        rows, name = split.X_test, "test"
    return instances(rows, plan), name


def instances(rows: pd.DataFrame, plan: planning.Plan) -> list[list[Any]]:
    """Rows of the plan's frame as request instances: JSON values in feature order."""
    return [
        [_json_value(value, feature) for value, feature in zip(row, plan.features, strict=True)]
        for row in rows.itertuples(index=False)
    ]


def _json_value(value: Any, feature: planning.FeaturePlan) -> Any:
    if feature.kind == "categorical":
        return None if value is None or value != value else str(value)
    number = float(value)
    if math.isnan(number):
        return None
    return int(number) if feature.dtype == "int64" else number
