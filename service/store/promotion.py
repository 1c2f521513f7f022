"""Which way a metric points, and the promotion gate built on it.

A promotion must not make an alias serve a model that scored worse on the test
set, by its primary metric, than the version the alias serves now.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from service.formatting import format_pair

# Error measures and rates of mistakes: smaller is better. Every other metric
# the training writes (accuracy, F1, ROC-AUC, R², ...) is better when larger.
LOWER_IS_BETTER = frozenset(
    {
        "mae",
        "mse",
        "rmse",
        "mape",
        "log_loss",
        "false_positive_rate",
        "false_negative_rate",
        "false_positive_rate_macro",
        "false_negative_rate_macro",
    }
)


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


@dataclasses.dataclass(frozen=True)
class GateRefusal:
    """Why the gate refuses a promotion: one line for people, and the facts behind it."""

    reason: str
    details: dict[str, Any]


def score_on_test(meta: dict[str, Any], metric: str) -> float | None:
    """A version's test score on ``metric``, or None when it has no usable one."""
    scores = meta.get("scores")
    test = scores.get("test") if isinstance(scores, dict) else None
    model = test.get("model") if isinstance(test, dict) else None
    value = model.get(metric) if isinstance(model, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def primary_metric(meta: dict[str, Any]) -> str | None:
    scores = meta.get("scores")
    metric = scores.get("primary_metric") if isinstance(scores, dict) else None
    return metric if isinstance(metric, str) and metric else None


def is_worse(candidate: float, current: float, metric: str) -> bool:
    return candidate < current if higher_is_better(metric) else candidate > current


def check_promotion(
    candidate: dict[str, Any], current: dict[str, Any], alias: str
) -> GateRefusal | None:
    """None when ``candidate`` may replace ``current`` as the target of ``alias``.

    The two are compared on the candidate's primary metric, on the test set: a
    candidate that scores worse, or that cannot be compared (either lacks the
    metric), is refused. Equal scores pass. Promoting the version the alias
    already points at is always allowed.
    """
    cand_label = _label(candidate)
    cur_label = f"{_label(current)} ({alias} now)"
    if candidate.get("version") == current.get("version"):
        return None
    metric = primary_metric(candidate)
    if metric is None:
        return GateRefusal(
            f"{cand_label} cannot be compared with {cur_label}: "
            f"{cand_label} names no primary metric",
            _details(None, candidate, None, current, None),
        )
    cand_score = score_on_test(candidate, metric)
    cur_score = score_on_test(current, metric)
    details = _details(metric, candidate, cand_score, current, cur_score)
    if cand_score is None or cur_score is None:
        missing = [
            _label(meta) + _primary_note(meta, metric)
            for meta, score in ((candidate, cand_score), (current, cur_score))
            if score is None
        ]
        return GateRefusal(
            f"{cand_label} cannot be compared with {cur_label} on {metric}: "
            f"{' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} "
            "no test score for it",
            details,
        )
    if not is_worse(cand_score, cur_score, metric):
        return None
    cand_text, cur_text = format_pair(cand_score, cur_score)
    return GateRefusal(
        f"{cand_label} scores {metric} {cand_text} on its test set, "
        f"worse than {cur_text} of {cur_label}",
        details,
    )


def _label(meta: dict[str, Any]) -> str:
    return f"{meta.get('name', '?')}@{meta.get('version', '?')}"


def _primary_note(meta: dict[str, Any], metric: str) -> str:
    own = primary_metric(meta)
    return f" (whose primary metric is {own})" if own and own != metric else ""


def _details(
    metric: str | None,
    candidate: dict[str, Any],
    cand_score: float | None,
    current: dict[str, Any],
    cur_score: float | None,
) -> dict[str, Any]:
    return {
        "metric": metric,
        "higher_is_better": higher_is_better(metric) if metric else None,
        "candidate": {"version": candidate.get("version"), "score": cand_score},
        "current": {"version": current.get("version"), "score": cur_score},
    }
