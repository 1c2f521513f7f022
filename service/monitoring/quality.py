"""Live quality: the labelled predictions of a model version against its test score.

Classifiers: accuracy and the recall of each class over the newest ``quality_window``
labelled predictions; regressors: the mean absolute error. The figure is compared with
the same metric of ``scores.test.model`` in metadata.yaml, in the direction that
matters (a lower accuracy, a higher MAE is worse), and flagged ``below_test_score``
when it is worse by more than ``quality_tolerance`` *of the test score* (0.05: an
accuracy under 95 % of the test accuracy, an MAE over 105 % of the test MAE). A
relative tolerance means the same thing for an accuracy of 0.97 and an MAE of 45.
"""

from __future__ import annotations

from typing import Any

ACCURACY = "accuracy"
MAE = "mae"


def metric_of(task: str) -> str:
    return ACCURACY if task == "classification" else MAE


def live_figures(
    task: str, classes: list[Any] | None, pairs: list[tuple[Any, Any]]
) -> dict[str, Any]:
    """From (prediction, label) pairs: {accuracy, class_recall} or {mae}; None when empty."""
    if task == "classification":
        classes = list(classes or [])
        if not pairs:
            return {ACCURACY: None, "class_recall": {str(c): None for c in classes}}
        correct = sum(1 for prediction, label in pairs if prediction == label)
        recall: dict[str, float | None] = {}
        for cls in classes:
            of_class = [prediction for prediction, label in pairs if label == cls]
            recall[str(cls)] = (
                round(sum(1 for p in of_class if p == cls) / len(of_class), 6) if of_class else None
            )
        return {ACCURACY: round(correct / len(pairs), 6), "class_recall": recall}
    if not pairs:
        return {MAE: None}
    errors = [abs(float(prediction) - float(label)) for prediction, label in pairs]
    return {MAE: round(sum(errors) / len(errors), 6)}


def test_figures(metadata: dict[str, Any]) -> dict[str, Any]:
    """The same figures from ``scores.test.model`` (class recall is 1 - its FNR)."""
    scores = ((metadata.get("scores") or {}).get("test") or {}).get("model") or {}
    if metadata.get("task") == "classification":
        per_class = scores.get("per_class") or {}
        recall = {}
        for cls in metadata.get("classes") or []:
            entry = per_class.get(cls, per_class.get(str(cls))) or {}
            if "recall" in entry:
                recall[str(cls)] = entry["recall"]
            elif "false_negative_rate" in entry:
                recall[str(cls)] = round(1.0 - float(entry["false_negative_rate"]), 6)
        return {ACCURACY: scores.get(ACCURACY), "class_recall": recall}
    return {MAE: scores.get(MAE)}


def threshold(metric: str, test_score: float, tolerance: float) -> float:
    """The worst live figure still within the tolerance."""
    if metric == MAE:
        return test_score * (1.0 + tolerance)
    return test_score * (1.0 - tolerance)


def below_test_score(metric: str, live: float | None, test: float | None, tolerance: float) -> bool:
    if live is None or test is None:
        return False
    bound = threshold(metric, float(test), tolerance)
    return live > bound if metric == MAE else live < bound


def version_report(
    metadata: dict[str, Any],
    pairs: list[tuple[Any, Any]],
    *,
    feedback_total: int,
    window: int,
    tolerance: float,
) -> dict[str, Any]:
    task = metadata.get("task", "classification")
    metric = metric_of(task)
    live = live_figures(task, metadata.get("classes"), pairs)
    test = test_figures(metadata)
    test_score = test.get(metric)
    return {
        "version": metadata.get("version"),
        "task": task,
        "metric": metric,
        "count": len(pairs),
        "window": window,
        "feedback_total": feedback_total,
        "live": live,
        "test": test,
        "threshold": (
            round(threshold(metric, float(test_score), tolerance), 6)
            if test_score is not None
            else None
        ),
        "below_test_score": below_test_score(metric, live.get(metric), test_score, tolerance),
    }
