"""LoadedModel: a verified estimator, its input schema, and how it predicts.

Loading checks everything that can be checked before the model serves:
the store verifies the artifact's sha256 before unpickling; here we check the
object is a fitted estimator whose features and classes agree with the
metadata, and replay the golden example recorded at training time.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from service.errors import ModelLoadError
from service.runtime import hooks
from service.runtime.schema import InputSchema
from service.store.store import ModelStore, StoredArtifact

log = logging.getLogger(__name__)

DEFAULT_GOLDEN_TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}


@dataclasses.dataclass
class Prediction:
    predictions: list[Any]
    probabilities: list[list[float]] | None = None


class LoadedModel:
    def __init__(self, artifact: StoredArtifact):
        self.metadata = artifact.metadata
        self.estimator = artifact.estimator
        self.name: str = artifact.metadata["name"]
        self.version: int = artifact.metadata["version"]
        self.task: str = artifact.metadata["task"]
        self.warnings: list[str] = list(artifact.warnings)
        self.schema = InputSchema.from_metadata(artifact.metadata)
        self.classes: list[Any] | None = (
            list(self.estimator.classes_) if hasattr(self.estimator, "classes_") else None
        )
        self.has_proba = self.task == "classification" and hasattr(self.estimator, "predict_proba")
        # An estimator fitted on a DataFrame wants one back; else a plain matrix is cheapest.
        self._feature_names = getattr(self.estimator, "feature_names_in_", None)
        self._check_against_metadata()
        self._replay_golden()

    # -- prediction ------------------------------------------------------------

    def predict(self, instances: list[Any] | np.ndarray, *, with_proba: bool = True) -> Prediction:
        """Validate instances (objects, lists or a 2-D array) and predict. Raises InvalidInput.

        Observers registered in ``runtime.hooks`` (monitoring) see every prediction
        served this way."""
        started = time.perf_counter()
        model_input = self.prepare(instances)
        prediction = self.predict_prepared(model_input, with_proba=with_proba)
        if hooks.observed():
            hooks.notify(
                hooks.PredictionEvent(
                    self,
                    model_input,
                    prediction,
                    hooks.request_id.get(),
                    time.perf_counter() - started,
                )
            )
        return prediction

    def prepare(self, instances: list[Any] | np.ndarray) -> np.ndarray | pd.DataFrame:
        if isinstance(instances, np.ndarray):
            instances = instances.tolist()  # validated like any other rows
        values = self.schema.to_array(self.schema.rows(instances))
        if isinstance(values, np.ndarray) and self._feature_names is None:
            return values
        if isinstance(values, np.ndarray):
            return pd.DataFrame(values, columns=self.schema.names)
        return pd.DataFrame(dict(zip(self.schema.names, values, strict=True)))

    def predict_prepared(self, model_input: Any, *, with_proba: bool = True) -> Prediction:
        if self.has_proba and with_proba:
            probabilities = self.estimator.predict_proba(model_input)
            # argmax over predict_proba is what predict does for sklearn classifiers,
            # but not for every estimator: ask predict itself to stay exact.
            labels = self.estimator.predict(model_input)
            return Prediction(_to_list(labels), probabilities.tolist())
        return Prediction(_to_list(self.estimator.predict(model_input)))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "features": list(self.schema.names),
            "classes": _to_list(self.classes) if self.classes is not None else None,
            "warnings": self.warnings,
        }

    # -- load-time checks ------------------------------------------------------

    def _check_against_metadata(self) -> None:
        estimator, meta = self.estimator, self.metadata
        where = f"{self.name}@{self.version}"
        if not hasattr(estimator, "predict"):
            raise ModelLoadError(
                f"{where}: the artifact is a {type(estimator).__name__}, not an "
                "estimator with predict()"
            )
        try:
            check_is_fitted(estimator)
        except NotFittedError:
            raise ModelLoadError(f"{where}: the estimator is not fitted") from None
        except TypeError as exc:
            raise ModelLoadError(f"{where}: not a scikit-learn estimator: {exc}") from None
        n_features = getattr(estimator, "n_features_in_", None)
        if n_features is not None and n_features != self.schema.width:
            raise ModelLoadError(
                f"{where}: the estimator takes {n_features} features, the metadata lists "
                f"{self.schema.width}"
            )
        if self._feature_names is not None and list(self._feature_names) != list(self.schema.names):
            raise ModelLoadError(
                f"{where}: the estimator's feature names {list(self._feature_names)} differ from "
                f"the metadata's {list(self.schema.names)}"
            )
        if self.task == "classification":
            if self.classes is None:
                raise ModelLoadError(f"{where}: a classifier without classes_")
            if _to_list(self.classes) != list(meta.get("classes", [])):
                raise ModelLoadError(
                    f"{where}: the estimator's classes {_to_list(self.classes)} differ from the "
                    f"metadata's {meta.get('classes')}"
                )

    def _replay_golden(self) -> None:
        golden = self.metadata.get("golden")
        where = f"{self.name}@{self.version}"
        if not golden:
            self.warnings.append("no golden example in the metadata: outputs were not replayed")
            log.warning("%s: no golden example in the metadata; outputs not replayed", where)
            return
        tolerance = {**DEFAULT_GOLDEN_TOLERANCE, **golden.get("tolerance", {})}
        try:
            # Not through predict(): a load-time check is not served traffic.
            got = self.predict_prepared(self.prepare(golden["instances"]))
        except Exception as exc:
            raise ModelLoadError(f"{where}: the golden example no longer runs: {exc}") from exc
        expected = golden["predictions"]
        if self.task == "classification":
            same = got.predictions == expected
        else:
            same = np.allclose(got.predictions, expected, **tolerance)
        if same and golden.get("probabilities") is not None and got.probabilities is not None:
            same = np.allclose(got.probabilities, golden["probabilities"], **tolerance)
        if not same:
            raise ModelLoadError(
                f"{where}: the golden example gives other outputs than at training time "
                f"(expected {expected}, got {got.predictions}); refusing to serve it",
                code="golden_mismatch",
            )


def load(
    store: ModelStore, name: str, version: int, *, refuse_version_mismatch: bool = False
) -> LoadedModel:
    artifact = store.load_artifact(name, version, refuse_version_mismatch=refuse_version_mismatch)
    return LoadedModel(artifact)


def _to_list(values: Any) -> list[Any]:
    if isinstance(values, np.ndarray):
        return values.tolist()
    return [v.item() if isinstance(v, np.generic) else v for v in values]
