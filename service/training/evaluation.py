"""Scores of a model and of a baseline on the same rows, with scikit-learn's metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.model_selection import cross_validate

from service.store.promotion import higher_is_better

# The metrics a spec may name as primary, per task, with scikit-learn's scorer for each
# (used by hyperparameter search and cross-validation; "neg_" scorers are negated errors).
SCORERS = {
    "classification": {
        "accuracy": "accuracy",
        "balanced_accuracy": "balanced_accuracy",
        "precision_macro": "precision_macro",
        "recall_macro": "recall_macro",
        "f1_macro": "f1_macro",
        "roc_auc": "roc_auc",
        "roc_auc_ovr": "roc_auc_ovr",
        "log_loss": "neg_log_loss",
    },
    "regression": {
        "r2": "r2",
        "mae": "neg_mean_absolute_error",
        "mse": "neg_mean_squared_error",
        "rmse": "neg_root_mean_squared_error",
        "mape": "neg_mean_absolute_percentage_error",
    },
}
PROBABILITY_METRICS = frozenset({"roc_auc", "roc_auc_ovr", "log_loss"})

# The Dummy strategies a spec may name as its baseline. A spec that names none is judged
# against the strongest of them on its primary metric, scored on the candidate's validation
# rows: one fixed strategy can be weak on some metric (most_frequent under a macro average),
# and a model that learned nothing would beat it by chance.
BASELINE_STRATEGIES = {
    "classification": ("most_frequent", "prior", "stratified", "uniform"),
    "regression": ("mean", "median"),
}

CURVE_POINTS = 101
RESIDUAL_POINTS = 500


def baseline_strategies(task: str, chosen: str = "") -> tuple[str, ...]:
    """The strategies to score: the spec's own, or every one of the task."""
    return (chosen,) if chosen else BASELINE_STRATEGIES[task]


def make_baseline(task: str, strategy: str, seed: int = 0):
    if task == "classification":
        return DummyClassifier(strategy=strategy, random_state=seed)
    return DummyRegressor(strategy=strategy)


def strongest(metric: str, scores: dict[str, float | None]) -> str | None:
    """The strategy with the best score on ``metric`` (the first of equals), or None when
    none has one."""
    scored = [(strategy, value) for strategy, value in scores.items() if value is not None]
    if not scored:
        return None
    sign = 1 if higher_is_better(metric) else -1
    return max(scored, key=lambda item: sign * item[1])[0]


def describe_baseline(
    task: str, strategy: str, seed: int = 0, *, chosen_by: str = ""
) -> dict[str, Any]:
    baseline = make_baseline(task, strategy, seed)
    cls = type(baseline)
    described = {"class": f"{cls.__module__}.{cls.__name__}", "params": baseline.get_params()}
    described["strategy"] = strategy
    if chosen_by:
        described["chosen_by"] = chosen_by
    return described


def outputs(metric: str, estimator, X, classes=None) -> np.ndarray | None:
    """What ``metric`` is computed from: probabilities (one column per entry of
    ``classes``, default the estimator's) for the metrics of PROBABILITY_METRICS,
    predictions for the others; None when the estimator gives no probabilities."""
    if metric not in PROBABILITY_METRICS:
        return np.asarray(estimator.predict(X))
    probabilities = _probabilities(estimator, X)
    if probabilities is None or classes is None:
        return probabilities
    # A fold's model may lack a class its training rows did not hold: its column is 0.
    aligned = np.zeros((len(probabilities), len(classes)))
    position = {label: i for i, label in enumerate(list(classes))}
    for j, label in enumerate(estimator.classes_):
        aligned[:, position[label]] = probabilities[:, j]
    return aligned


def scorer_name(task: str, metric: str) -> str:
    return SCORERS[task][metric]


def score(task: str, estimator, X, y) -> dict[str, Any]:
    if task == "classification":
        return classification_scores(estimator, X, y)
    return regression_scores(estimator, X, y)


def cross_validated_scores(
    task: str, estimator, X, y, cv, metric: str
) -> tuple[dict[str, float], dict[str, float], np.ndarray | None]:
    """Mean and standard deviation of each scalar metric over the folds of ``cv``, and the
    out-of-fold outputs ``metric`` is computed from (each row's from the fold that held it
    out; see ``outputs``)."""
    labels = np.unique(y) if task == "classification" else None
    names = dict(SCORERS[task])
    if task == "classification":
        names.pop("roc_auc" if len(labels) > 2 else "roc_auc_ovr")
        if not hasattr(estimator, "predict_proba"):
            for name in PROBABILITY_METRICS:
                names.pop(name, None)
    result = cross_validate(
        estimator,
        X,
        y,
        cv=cv,
        scoring=names,
        error_score="raise",
        return_estimator=True,
        return_indices=True,
    )
    scores: dict[str, Any] = {}
    spread: dict[str, float] = {}
    for name, scorer in names.items():
        values = result[f"test_{name}"]
        if scorer.startswith("neg_"):
            values = -values
        scores[name] = _plain(float(np.mean(values)))
        spread[name] = _plain(float(np.std(values)))
    return scores, spread, _out_of_fold(metric, result, X, labels)


def _out_of_fold(metric: str, result: dict[str, Any], X, labels) -> np.ndarray | None:
    held_out = result["indices"]["test"]
    parts = [
        outputs(metric, fitted, X.iloc[rows] if hasattr(X, "iloc") else X[rows], labels)
        for fitted, rows in zip(result["estimator"], held_out, strict=True)
    ]
    if any(part is None for part in parts):
        return None
    stacked = np.concatenate(parts)
    combined = np.empty_like(stacked)
    combined[np.concatenate(held_out)] = stacked
    return combined


def classification_scores(estimator, X, y) -> dict[str, Any]:
    predicted = estimator.predict(X)
    labels = list(estimator.classes_)
    matrix = metrics.confusion_matrix(y, predicted, labels=labels)
    scores: dict[str, Any] = {
        "accuracy": metrics.accuracy_score(y, predicted),
        "balanced_accuracy": metrics.balanced_accuracy_score(y, predicted),
        "precision_macro": metrics.precision_score(y, predicted, average="macro", zero_division=0),
        "recall_macro": metrics.recall_score(y, predicted, average="macro", zero_division=0),
        "f1_macro": metrics.f1_score(y, predicted, average="macro", zero_division=0),
    }
    # False-positive and false-negative rates per class (one class against the rest).
    true_pos = np.diag(matrix)
    false_pos = matrix.sum(axis=0) - true_pos
    false_neg = matrix.sum(axis=1) - true_pos
    true_neg = matrix.sum() - true_pos - false_pos - false_neg
    fpr = _ratio(false_pos, false_pos + true_neg)
    fnr = _ratio(false_neg, false_neg + true_pos)
    if len(labels) == 2:
        # Binary: the second class (sklearn's pos_label convention) is "positive".
        scores["false_positive_rate"] = fpr[1]
        scores["false_negative_rate"] = fnr[1]
    else:
        scores["false_positive_rate_macro"] = float(np.mean(fpr))
        scores["false_negative_rate_macro"] = float(np.mean(fnr))
    probabilities = _probabilities(estimator, X)
    if probabilities is not None and len(np.unique(y)) > 1:
        if len(labels) == 2:
            scores["roc_auc"] = metrics.roc_auc_score(y, probabilities[:, 1])
        else:
            scores["roc_auc_ovr"] = metrics.roc_auc_score(
                y, probabilities, multi_class="ovr", labels=labels
            )
        scores["log_loss"] = metrics.log_loss(y, probabilities, labels=labels)
    scores = {k: _plain(v) for k, v in scores.items()}
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    scores["per_class"] = {
        _plain(label): {
            "precision": _plain(precision[i]),
            "recall": _plain(recall[i]),
            "f1": _plain(f1[i]),
            "support": int(support[i]),
            "false_positive_rate": fpr[i],
            "false_negative_rate": fnr[i],
        }
        for i, label in enumerate(labels)
    }
    scores["confusion_matrix"] = {
        "labels": [_plain(label) for label in labels],
        "matrix": matrix.tolist(),
    }
    return scores


def regression_scores(estimator, X, y) -> dict[str, Any]:
    predicted = estimator.predict(X)
    mse = metrics.mean_squared_error(y, predicted)
    scores = {
        "mae": _plain(metrics.mean_absolute_error(y, predicted)),
        "mse": _plain(mse),
        "rmse": _plain(np.sqrt(mse)),
        "r2": _plain(metrics.r2_score(y, predicted)),
    }
    # MAPE divides by the actual value: undefined when a target is zero.
    if np.all(np.abs(np.asarray(y, dtype=np.float64)) > np.finfo(np.float64).eps):
        scores["mape"] = _plain(metrics.mean_absolute_percentage_error(y, predicted))
    return scores


def curves(estimator, X, y) -> dict[str, Any] | None:
    """ROC and precision-recall curves on these rows: one for the positive class of a
    binary classifier, one per class (against the rest) for more classes."""
    probabilities = _probabilities(estimator, X)
    if probabilities is None:
        return None
    labels = list(estimator.classes_)
    y = np.asarray(y)
    wanted = [1] if len(labels) == 2 else range(len(labels))
    roc, precision_recall = [], []
    for i in wanted:
        positive = y == labels[i]
        if positive.all() or not positive.any():
            continue  # a curve needs both outcomes among the rows
        fpr, tpr, _ = metrics.roc_curve(positive, probabilities[:, i])
        precision, recall, _ = metrics.precision_recall_curve(positive, probabilities[:, i])
        roc.append(
            {
                "label": _plain(labels[i]),
                "auc": _plain(metrics.auc(fpr, tpr)),
                "fpr": _thin(fpr),
                "tpr": _thin(tpr),
            }
        )
        precision_recall.append(
            {
                "label": _plain(labels[i]),
                "average_precision": _plain(
                    metrics.average_precision_score(positive, probabilities[:, i])
                ),
                "precision": _thin(precision),
                "recall": _thin(recall),
            }
        )
    return {"roc": roc, "precision_recall": precision_recall}


def residual_points(estimator, X, y, seed: int = 0) -> dict[str, list[float]]:
    """Actual and predicted values of (at most RESIDUAL_POINTS) rows, for plots."""
    y = np.asarray(y, dtype=np.float64)
    predicted = np.asarray(estimator.predict(X), dtype=np.float64)
    if len(y) > RESIDUAL_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), RESIDUAL_POINTS, replace=False))
        y, predicted = y[keep], predicted[keep]
    return {
        "actual": [round(float(v), 6) for v in y],
        "predicted": [round(float(v), 6) for v in predicted],
    }


def improvement(metric: str, model_score: float, baseline_score: float) -> float:
    """How much better the model is than the baseline on ``metric`` (negative: worse)."""
    difference = model_score - baseline_score
    return difference if higher_is_better(metric) else -difference


def _probabilities(estimator, X) -> np.ndarray | None:
    if not hasattr(estimator, "predict_proba"):
        return None
    try:
        return estimator.predict_proba(X)
    except AttributeError:  # e.g. SVC(probability=False) advertises but refuses
        return None


def _thin(values: np.ndarray) -> list[float]:
    """At most CURVE_POINTS points of a curve, first and last kept."""
    if len(values) > CURVE_POINTS:
        values = values[np.linspace(0, len(values) - 1, CURVE_POINTS).round().astype(int)]
    return [round(float(v), 4) for v in values]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> list[float]:
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(denominator > 0, numerator / np.maximum(denominator, 1), 0.0)
    return [round(float(v), 6) for v in values]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value
