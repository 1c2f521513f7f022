"""Is the candidate's lead over the baseline more than luck? A paired bootstrap.

Both models' outputs on the same validation rows are resampled together (the same rows
for both in each resample) and the primary metric is recomputed on each resample for
both, so the test suits metrics that are not a mean over rows (F1 macro, ROC-AUC, R²)
as well as those that are (MAE, log loss). Classification rows are resampled within
each true class, so every resample holds every class the validation rows hold and keeps
their class counts. The p-value is the share of resamples in which the improvement
(candidate minus baseline, sign-adjusted so that higher is better) is at most the margin:
below ``alpha`` exactly when the one-sided (1 - alpha) percentile bound on the
improvement clears the margin.

Each resample is a row of multinomial counts, and every metric is computed from counts
with matrix products (no Python loop over resamples), at most MAX_ROWS rows and
RESAMPLES resamples, in chunks of at most CHUNK_CELLS counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.store.promotion import higher_is_better
from service.training.evaluation import PROBABILITY_METRICS

METHOD = "paired bootstrap"
RESAMPLES = 1000
# Beyond this many validation rows, a seeded sample of them is resampled: the interval is
# then wider than it needs to be (the test errs towards refusing), and the cost is bounded.
MAX_ROWS = 10_000
CHUNK_CELLS = 2_000_000


def paired_bootstrap(
    task: str,
    metric: str,
    y: Any,
    model_output: np.ndarray,
    baseline_output: np.ndarray,
    *,
    classes: Any = None,
    margin: float = 0.0,
    alpha: float = 0.05,
    seed: int = 0,
    resamples: int = RESAMPLES,
    max_rows: int = MAX_ROWS,
) -> dict[str, Any]:
    """p-value and percentile interval of the improvement of the model over the baseline.

    Outputs are predicted labels or values, or, for the metrics of PROBABILITY_METRICS,
    probabilities with one column per entry of ``classes``."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    model_output, baseline_output = np.asarray(model_output), np.asarray(baseline_output)
    if len(y) > max_rows:
        keep = np.sort(rng.choice(len(y), max_rows, replace=False))
        y, model_output, baseline_output = y[keep], model_output[keep], baseline_output[keep]
    score = _scorer(task, metric, y, classes)
    strata = _strata(y) if task == "classification" else [np.arange(len(y))]
    sign = 1.0 if higher_is_better(metric) else -1.0
    # Counts are whole numbers below 2**24: exact in float32 for labels and probabilities;
    # regression keeps float64, as its sums of squares would lose digits.
    dtype = np.float32 if task == "classification" else np.float64
    chunk = max(1, min(resamples, CHUNK_CELLS // max(len(y), 1)))
    gains = []
    for start in range(0, resamples, chunk):
        counts = _counts(strata, len(y), min(chunk, resamples - start), rng, dtype)
        gains.append(sign * (score(model_output, counts) - score(baseline_output, counts)))
    gain = np.concatenate(gains)
    gain = gain[np.isfinite(gain)]
    if len(gain) == 0:  # no resample gave a score: nothing supports the candidate
        p_value, low, high = 1.0, None, None
    else:
        p_value = (1 + int(np.count_nonzero(gain <= margin))) / (len(gain) + 1)
        low, high = (float(q) for q in np.quantile(gain, [alpha, 1 - alpha]))
    return {
        "method": METHOD + (", stratified by class" if task == "classification" else ""),
        "p_value": round(p_value, 6),
        "interval": {
            "low": None if low is None else round(low, 6),
            "high": None if high is None else round(high, 6),
            "level": round(1 - 2 * alpha, 6),
        },
        "resamples": resamples,
        "rows": len(y),
        "seed": seed,
    }


def _strata(y: np.ndarray) -> list[np.ndarray]:
    _, codes = np.unique(y, return_inverse=True)
    return [np.flatnonzero(codes == code) for code in range(codes.max() + 1)]


def _counts(strata: list[np.ndarray], n: int, resamples: int, rng, dtype) -> np.ndarray:
    """How often each row is drawn in each resample: (resamples, n), each row summing to n,
    each stratum keeping its size."""
    offsets = (np.arange(resamples) * n)[:, None]
    drawn = np.concatenate(
        [rows[rng.integers(0, len(rows), size=(resamples, len(rows)))] for rows in strata],
        axis=1,
    )
    counts = np.bincount((drawn + offsets).ravel(), minlength=resamples * n)
    return counts.reshape(resamples, n).astype(dtype)


def _scorer(task: str, metric: str, y: np.ndarray, classes: Any):
    """metric(outputs, counts) -> one score per row of counts."""
    if task == "regression":
        return _regression(metric, y.astype(np.float64))
    if metric in PROBABILITY_METRICS:
        return _probability(metric, y, np.asarray(classes))
    return _labels(metric, y)


def weighted_scores(task: str, metric: str, y: Any, outputs: Any, counts: Any, classes=None):
    """The metric of ``outputs`` on the rows weighted by each row of ``counts``."""
    y = np.asarray(y)
    counts = np.atleast_2d(counts).astype(np.float32 if task == "classification" else np.float64)
    return _scorer(task, metric, y, classes)(np.asarray(outputs), counts)


def _regression(metric: str, y: np.ndarray):
    y_squared = y**2
    tiny = np.finfo(np.float64).eps

    def score(predicted: np.ndarray, counts: np.ndarray) -> np.ndarray:
        error = y - predicted.astype(np.float64)
        total = counts.sum(axis=1)
        if metric == "mae":
            return counts @ np.abs(error) / total
        if metric == "mape":
            return counts @ (np.abs(error) / np.maximum(np.abs(y), tiny)) / total
        squared = counts @ error**2
        if metric == "mse":
            return squared / total
        if metric == "rmse":
            return np.sqrt(squared / total)
        # r2: 1 - SSE / SST, with SST around each resample's own mean.
        spread = counts @ y_squared - (counts @ y) ** 2 / total
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(spread > 0, 1 - squared / spread, np.where(squared > 0, 0.0, 1.0))

    return score


def _labels(metric: str, y: np.ndarray):
    def score(predicted: np.ndarray, counts: np.ndarray) -> np.ndarray:
        labels, codes = np.unique(np.concatenate([y, predicted]), return_inverse=True)
        truth = np.eye(len(labels), dtype=counts.dtype)[codes[: len(y)]]
        guess = np.eye(len(labels), dtype=counts.dtype)[codes[len(y) :]]
        support, guessed, hits = (
            (counts @ matrix).astype(np.float64) for matrix in (truth, guess, truth * guess)
        )
        if metric == "accuracy":
            return hits.sum(axis=1) / counts.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = np.where(support > 0, hits / support, 0.0)
            precision = np.where(guessed > 0, hits / guessed, 0.0)
            f1 = np.where(support + guessed > 0, 2 * hits / (support + guessed), 0.0)
        if metric == "balanced_accuracy":
            present = support > 0
            return (recall * present).sum(axis=1) / present.sum(axis=1)
        # Macro averages over the labels among the true or predicted ones, as scikit-learn.
        present = (support > 0) | (guessed > 0)
        per_label = {"f1_macro": f1, "precision_macro": precision, "recall_macro": recall}
        return (per_label[metric] * present).sum(axis=1) / present.sum(axis=1)

    return score


def _probability(metric: str, y: np.ndarray, classes: np.ndarray):
    index = {label: i for i, label in enumerate(classes.tolist())}
    codes = np.array([index[label] for label in y.tolist()])

    def score(probabilities: np.ndarray, counts: np.ndarray) -> np.ndarray:
        probabilities = probabilities.astype(np.float64)
        if metric == "log_loss":
            eps = np.finfo(probabilities.dtype).eps
            picked = np.clip(probabilities[np.arange(len(y)), codes], eps, 1.0)
            return counts @ -np.log(picked) / counts.sum(axis=1)
        if metric == "roc_auc":
            return _auc(probabilities[:, 1], codes == 1, counts)
        # roc_auc_ovr: the macro mean of each class's area against the rest.
        return np.mean(
            [_auc(probabilities[:, i], codes == i, counts) for i in range(len(classes))], axis=0
        )

    return score


def _auc(scores: np.ndarray, positive: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Area under the ROC curve with rows weighted by counts; ties count one half.

    For each positive row: the weight of the negatives scored below it, plus half of
    those scored the same, from a running sum over the negatives in score order."""
    negatives = np.flatnonzero(~positive)
    order = negatives[np.argsort(scores[negatives], kind="stable")]
    ranked = scores[order]
    positives = np.flatnonzero(positive)
    below = np.searchsorted(ranked, scores[positives], side="left")
    up_to = np.searchsorted(ranked, scores[positives], side="right")
    running = np.zeros((len(counts), len(order) + 1), dtype=counts.dtype)
    np.cumsum(counts[:, order], axis=1, out=running[:, 1:])
    beaten = running[:, below] + running[:, up_to]  # twice (below + half the ties)
    pairs = counts[:, positives].sum(axis=1, dtype=np.float64) * running[:, -1]
    won = np.einsum("ij,ij->i", counts[:, positives], beaten, dtype=np.float64) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return won / pairs
