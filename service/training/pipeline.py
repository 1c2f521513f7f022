"""The scikit-learn Pipeline a spec describes: preprocessing per feature, then the estimator,
optionally inside a hyperparameter search.

The pipeline is built from parts skl2onnx can convert, so a later compiled backend can
serve it: numbers go through SimpleImputer and StandardScaler, categories (already
strings, missing ones filled in by ``plan``) through OneHotEncoder.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import GridSearchCV, KFold, RandomizedSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from service.errors import InvalidSpec
from service.training.evaluation import scorer_name
from service.training.plan import FeaturePlan, Plan
from service.training.spec import TrainingSpec

MODEL_STEP = "model"
DISTRIBUTIONS = {
    "uniform": lambda low, high: stats.uniform(low, high - low),
    "loguniform": stats.loguniform,
    "randint": stats.randint,
}


def make_estimator(spec: TrainingSpec):
    """The estimator class the spec names, with its parameters, checked before any fit."""
    cls = _import_class(spec.estimator_class)
    params = dict(spec.estimator_params)
    accepted = set(inspect.signature(cls).parameters)
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidSpec(
                f"spec field estimator.params.{key}: not a parameter of {cls.__name__}{hint}",
                field=f"estimator.params.{key}",
            )
    # Reproducible by default: the spec's seed unless the spec sets random_state itself.
    if "random_state" in accepted and "random_state" not in params:
        params["random_state"] = spec.evaluation.seed
    try:
        estimator = cls(**params)
    except (TypeError, ValueError) as exc:
        raise InvalidSpec(f"spec field estimator.params: {exc}", field="estimator.params") from None
    if spec.classification and not is_classifier(estimator):
        kind = "a regressor" if is_regressor(estimator) else "not a classifier"
        raise InvalidSpec(
            f"spec field estimator.class: {spec.estimator_class} is {kind}, but the task is "
            "classification",
            field="estimator.class",
        )
    if not spec.classification and not is_regressor(estimator):
        kind = "a classifier" if is_classifier(estimator) else "not a regressor"
        raise InvalidSpec(
            f"spec field estimator.class: {spec.estimator_class} is {kind}, but the task is "
            "regression",
            field="estimator.class",
        )
    validate = getattr(estimator, "_validate_params", None)
    if validate is not None:  # scikit-learn checks parameter values only when fitting
        try:
            validate()
        except (TypeError, ValueError) as exc:
            raise InvalidSpec(
                f"spec field estimator.params: {exc}", field="estimator.params"
            ) from None
    return estimator


def build(spec: TrainingSpec, plan: Plan) -> Pipeline:
    """The preprocessing + estimator pipeline, unfitted."""
    estimator = make_estimator(spec)
    if _takes_matrix(plan.features):
        steps = _numeric_steps(plan.features[0])
        return Pipeline([*steps, (MODEL_STEP, estimator)])
    groups: dict[tuple[Any, ...], list[str]] = {}
    for feature in plan.features:
        groups.setdefault(_treatment_key(feature), []).append(feature.name)
    transformers = []
    for index, (key, columns) in enumerate(groups.items()):
        example = next(f for f in plan.features if f.name == columns[0])
        if key[0] == "numeric":
            steps = _numeric_steps(example)
            transformer = Pipeline(steps) if steps else "passthrough"
        else:
            transformer = OneHotEncoder(
                handle_unknown=example.handle_unknown,
                min_frequency=example.min_frequency,
                max_categories=example.max_categories,
                sparse_output=False,
            )
        # One group per kind is named after it; several are numbered.
        siblings = sum(1 for other in groups if other[0] == key[0])
        name = key[0] if siblings == 1 else f"{key[0]}_{index}"
        transformers.append((name, transformer, columns))
    preprocess = ColumnTransformer(transformers, remainder="drop")
    return Pipeline([("preprocess", preprocess), (MODEL_STEP, estimator)])


def model_input(pipeline: Pipeline, X: pd.DataFrame) -> np.ndarray | pd.DataFrame:
    """What the pipeline is fitted on and predicts from: a float matrix when every feature
    is a number treated alike (no column names to carry, cheapest to serve), else the frame."""
    if isinstance(pipeline.steps[0][1], ColumnTransformer):
        return X
    return X.to_numpy(dtype=np.float64)


def with_search(spec: TrainingSpec, pipeline: Pipeline):
    """The pipeline wrapped in the spec's grid or randomized search, checked."""
    search = spec.search
    if search is None:
        return pipeline
    known = pipeline.get_params()
    space: dict[str, Any] = {}
    for key, values in search.params.items():
        name = key if "__" in key else f"{MODEL_STEP}__{key}"
        field = f"estimator.search.params.{key}"
        if name not in known:
            options = [k.removeprefix(f"{MODEL_STEP}__") for k in known if "__" in k]
            close = difflib.get_close_matches(key, options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidSpec(
                f"spec field {field}: not a parameter of the pipeline{hint}", field=field
            )
        space[name] = _values(values, search.kind, field)
    folds = (
        StratifiedKFold(search.folds, shuffle=True, random_state=spec.evaluation.seed)
        if spec.classification
        else KFold(search.folds, shuffle=True, random_state=spec.evaluation.seed)
    )
    scoring = scorer_name(spec.task, spec.evaluation.primary_metric)
    if search.kind == "grid":
        return GridSearchCV(pipeline, space, cv=folds, scoring=scoring, error_score="raise")
    return RandomizedSearchCV(
        pipeline,
        space,
        n_iter=search.n_iter,
        cv=folds,
        scoring=scoring,
        random_state=spec.evaluation.seed,
        error_score="raise",
    )


def _values(values: Any, kind: str, field: str) -> Any:
    if isinstance(values, list) and values:
        return values
    if kind == "randomized" and isinstance(values, dict):
        name = values.get("distribution")
        if name not in DISTRIBUTIONS or not {"low", "high"} <= set(values):
            raise InvalidSpec(
                f"spec field {field}: a distribution is {{distribution: "
                f"{'|'.join(DISTRIBUTIONS)}, low: ..., high: ...}}",
                field=field,
            )
        try:
            return DISTRIBUTIONS[name](values["low"], values["high"])
        except (TypeError, ValueError) as exc:
            raise InvalidSpec(f"spec field {field}: {exc}", field=field) from None
    raise InvalidSpec(
        f"spec field {field}: give a non-empty list of values"
        + (" or a distribution" if kind == "randomized" else ""),
        field=field,
    )


def _import_class(path: str):
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise InvalidSpec(
            f"spec field estimator.class: no module {module_name!r} (from {path!r})",
            field="estimator.class",
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(class_name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InvalidSpec(
            f"spec field estimator.class: {module_name} has no {class_name!r}{hint}",
            field="estimator.class",
        )
    if not isinstance(cls, type) or not (hasattr(cls, "fit") and hasattr(cls, "predict")):
        raise InvalidSpec(
            f"spec field estimator.class: {path} is not an estimator class with fit and predict",
            field="estimator.class",
        )
    return cls


def _takes_matrix(features: list[FeaturePlan]) -> bool:
    keys = {_treatment_key(f) for f in features}
    return len(keys) == 1 and features[0].kind == "numeric"


def _treatment_key(feature: FeaturePlan) -> tuple[Any, ...]:
    if feature.kind == "numeric":
        return ("numeric", feature.impute, feature.fill_value, feature.scale)
    return (
        "categorical",
        feature.handle_unknown,
        feature.min_frequency,
        feature.max_categories,
    )


def _numeric_steps(feature: FeaturePlan) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    if feature.impute != "none":
        imputer = (
            SimpleImputer(strategy="constant", fill_value=feature.fill_value)
            if feature.impute == "constant"
            else SimpleImputer(strategy=feature.impute)
        )
        steps.append(("impute", imputer))
    if feature.scale == "standard":
        steps.append(("scale", StandardScaler()))
    return steps
