"""Estimators for the fault tests, pickled into store versions: the Gunicorn workers unpickle
them, so they live in a module of their own (importable with the repository root on
PYTHONPATH), not in a test module."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin


class FromFittedBase:
    """An estimator built from a fitted ``base``: fitted as its base is, with its base's
    features."""

    base: Any

    def __sklearn_is_fitted__(self) -> bool:
        return True  # the base is

    @property
    def n_features_in_(self) -> int:
        return self.base.n_features_in_

    @property
    def feature_names_in_(self) -> Any:
        return self.base.feature_names_in_

    def fit(self, rows: Any, target: Any = None) -> Any:
        return self  # built from a fitted base, never fitted itself


class Shifted(FromFittedBase, RegressorMixin, BaseEstimator):
    """A fitted regressor whose predictions are moved by ``shift``: a version told apart from
    its base by every answer it gives."""

    def __init__(self, base: Any = None, shift: float = 0.0):
        self.base = base
        self.shift = shift

    def predict(self, rows: Any) -> Any:
        return self.base.predict(rows) + self.shift


class SlowToUnpickle(Shifted):
    """A regressor that takes ``seconds`` to unpickle (a large model on a slow disk), and
    predicts as its base does."""

    def __init__(self, base: Any = None, seconds: float = 0.0):
        super().__init__(base, 0.0)
        self.seconds = seconds

    def __setstate__(self, state: dict[str, Any]) -> None:
        time.sleep(state["seconds"])
        super().__setstate__(state)


class SlowRows(Shifted):
    """An estimator that predicts as its base does (regressor or classifier) after
    ``seconds`` per row: a candidate slower than the version it shadows."""

    def __init__(self, base: Any = None, seconds: float = 0.0):
        super().__init__(base, 0.0)
        self.seconds = seconds

    @property
    def classes_(self) -> Any:
        return self.base.classes_  # AttributeError for a regressor: it has none

    def predict(self, rows: Any) -> Any:
        time.sleep(self.seconds * len(rows))
        return self.base.predict(rows)


class BusyRows(SlowRows):
    """SlowRows that computes instead of waiting: ``seconds`` of this thread's CPU time per
    row, in Python (holding the GIL but for the interpreter's switches)."""

    def predict(self, rows: Any) -> Any:
        until = time.thread_time() + self.seconds * len(rows)
        while time.thread_time() < until:
            pass
        return self.base.predict(rows)


class Failing(Shifted):
    """A regressor that loads and then fails every prediction."""

    def predict(self, rows: Any) -> Any:
        raise RuntimeError("this version fails every prediction")


class OneLabel(FromFittedBase, ClassifierMixin, BaseEstimator):
    """A fitted classifier that answers ``label`` for every row, with its base's classes."""

    def __init__(self, base: Any = None, label: Any = None):
        self.base = base
        self.label = label

    @property
    def classes_(self) -> Any:
        return self.base.classes_

    def predict(self, rows: Any) -> Any:
        return np.full(len(rows), self.label, dtype=np.asarray(self.base.classes_).dtype)
