"""Scores of a model and of a baseline on the same rows, with scikit-learn's metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics
from sklearn.dummy import DummyClassifier, DummyRegressor

BASELINES = {
    "classification": (DummyClassifier, {"strategy": "most_frequent"}),
    "regression": (DummyRegressor, {"strategy": "mean"}),
}


def make_baseline(task: str):
    cls, params = BASELINES[task]
    return cls(**params)


def describe_baseline(task: str) -> dict[str, Any]:
    cls, params = BASELINES[task]
    return {"class": f"{cls.__module__}.{cls.__name__}", "params": dict(params)}


def score(task: str, estimator, X, y) -> dict[str, Any]:
    if task == "classification":
        return classification_scores(estimator, X, y)
    return regression_scores(estimator, X, y)


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
    if hasattr(estimator, "predict_proba"):
        probabilities = estimator.predict_proba(X)
        try:
            if len(labels) == 2:
                scores["roc_auc"] = metrics.roc_auc_score(y, probabilities[:, 1])
            else:
                scores["roc_auc_ovr"] = metrics.roc_auc_score(
                    y, probabilities, multi_class="ovr", labels=labels
                )
        except ValueError:
            pass  # one class only in y: ROC-AUC is undefined
    scores = {k: _plain(v) for k, v in scores.items()}
    scores["per_class"] = {
        _plain(label): {"false_positive_rate": fpr[i], "false_negative_rate": fnr[i]}
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
    return {
        "mae": _plain(metrics.mean_absolute_error(y, predicted)),
        "mse": _plain(mse),
        "rmse": _plain(np.sqrt(mse)),
        "r2": _plain(metrics.r2_score(y, predicted)),
    }


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
