"""How a fitted estimator, its data and its environment are written into metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np


def class_path(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def estimator_description(estimator: Any) -> dict[str, Any]:
    """The class and every parameter, nested estimators included, as plain YAML values."""
    described: dict[str, Any] = {"class": class_path(estimator)}
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        described["steps"] = [{"name": name, **estimator_description(step)} for name, step in steps]
        described["params"] = {}
        return described
    described["params"] = {
        key: plain(value) for key, value in sorted(estimator.get_params(deep=False).items())
    }
    return described


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def golden_example(estimator: Any, rows: np.ndarray, task: str) -> dict[str, Any]:
    """A few input rows and the outputs they give now, replayed whenever the model loads."""
    rows = np.asarray(rows, dtype=np.float64)
    golden: dict[str, Any] = {
        "instances": rows.tolist(),
        "predictions": estimator.predict(rows).tolist(),
        "probabilities": None,
        "tolerance": {"rtol": 1e-6, "atol": 1e-9},
    }
    if task == "classification" and hasattr(estimator, "predict_proba"):
        golden["probabilities"] = estimator.predict_proba(rows).tolist()
    return golden


def plain(value: Any) -> Any:
    """A value YAML can hold: numpy scalars as Python ones, estimators described, other
    objects by their repr."""
    # numpy scalars first: np.float64 is also a float, and YAML cannot write it.
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "get_params"):
        return estimator_description(value)
    return repr(value)
