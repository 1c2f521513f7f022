"""Which way a metric points, and the promotion gate built on it.

A promotion must not make an alias serve a model that scored worse on the test
set, by its primary metric, than the version the alias serves now.
"""

from __future__ import annotations

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
