"""Training statistics of each feature: the input schema validation and drift rely on."""

from __future__ import annotations

from typing import Any

import numpy as np

HISTOGRAM_BINS = 10


def numeric_feature(
    name: str, values: np.ndarray, *, dtype: str = "float64", missing: str = "reject"
) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    counts, edges = np.histogram(present, bins=HISTOGRAM_BINS)
    return {
        "name": name,
        "dtype": dtype,
        "missing": missing,
        "stats": {
            "min": float(present.min()),
            "max": float(present.max()),
            "mean": round(float(present.mean()), 6),
            "std": round(float(present.std()), 6),
            "missing_rate": round(1.0 - len(present) / max(len(values), 1), 6),
            "histogram": {
                "edges": [round(float(e), 6) for e in edges],
                "counts": [int(c) for c in counts],
            },
        },
    }


def categorical_feature(name: str, values: np.ndarray, *, missing_values: int) -> dict[str, Any]:
    """Statistics of a categorical column (after missing values were filled in): the share
    of each category, for drift, and how often the value was missing."""
    categories, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    total = max(int(counts.sum()), 1)
    return {
        "missing_rate": round(missing_values / total, 6),
        "category_shares": {
            str(c): round(int(n) / total, 6) for c, n in zip(categories, counts, strict=True)
        },
    }
