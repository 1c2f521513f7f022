"""LoadedModel: a verified estimator, its input schema, and how it predicts.

Loading checks everything that can be checked before the model serves:
the store verifies the artifact's sha256 before unpickling; here we check the
object is a fitted estimator whose features and classes agree with the
metadata, choose the backend that computes (``backends.py``: the compiled ONNX
form where its parity was checked at publish, else the pickle), and replay the
golden example recorded at training time through it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from service.errors import ModelLoadError, NonFiniteOutput, ServiceError
from service.runtime import hooks
from service.runtime.backends import (
    SKLEARN,
    OnnxBackend,
    Prediction,
    SklearnBackend,
    to_list,
)
from service.runtime.schema import MAX_REPORTED_PROBLEMS, InputSchema
from service.store.metadata import onnx_backend
from service.store.store import ModelStore, StoredArtifact

__all__ = ["LoadedModel", "Prediction", "load"]

log = logging.getLogger(__name__)

DEFAULT_GOLDEN_TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}


class LoadedModel:
    def __init__(self, artifact: StoredArtifact, *, backend: str = "auto"):
        """``backend``: "auto" serves through onnxruntime where the metadata allows it,
        "sklearn" always through the pickle."""
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
        # The pickle: the backend whenever the compiled one may not or cannot serve.
        self.sklearn_backend = SklearnBackend(self.estimator, self.schema.names)
        self._feature_names = self.sklearn_backend.feature_names
        self.backend: SklearnBackend | OnnxBackend = self.sklearn_backend
        # Requests the compiled backend could not serve, answered by the pickle instead.
        self.fallbacks = 0
        # Who sees its predictions: the observers of the registry that loaded it (None
        # outside one: a batch run, an embedding program).
        self.observers: hooks.Observers | None = None
        self._check_against_metadata()
        if backend != SKLEARN:
            self.backend = self._compiled_backend(artifact)
        self._replay_golden()

    # -- prediction ------------------------------------------------------------

    def predict(
        self,
        instances: list[Any] | np.ndarray,
        *,
        with_proba: bool = True,
        may_hold_booleans: bool = True,
        may_hold_text: bool = True,
    ) -> Prediction:
        """Validate instances (objects, lists or a 2-D array) and predict. Raises InvalidInput.

        ``may_hold_booleans=False`` when the instances were parsed from JSON text with no
        true or false in it: the numbers are then checked faster (``InputSchema.to_array``);
        ``may_hold_text=False`` too when no string can be among them: faster still for
        many rows (``InputSchema.from_number_lists``).
        The observers of the registry that loaded it (monitoring) and those of the
        process (``runtime.hooks``) see every prediction served this way."""
        started = time.perf_counter()
        values = self.validate(
            instances, may_hold_booleans=may_hold_booleans, may_hold_text=may_hold_text
        )
        prediction = self.predict_prepared(values, with_proba=with_proba)
        # predict_prepared returns onnxruntime's outputs only when they are all finite: the
        # pickle's are the ones left to check (a pass over every output, per request).
        if prediction.backend == SKLEARN:
            refused = non_finite_rows(prediction)
            if refused:
                # Before the observers: a refused prediction is neither logged nor monitored.
                raise _non_finite_output(refused)
        observers = self.observers
        if observers or hooks.observed():
            event = hooks.PredictionEvent(
                self,
                # The validated values themselves: no DataFrame is built for observers.
                values,
                prediction,
                hooks.request_id.get(),
                time.perf_counter() - started,
            )
            if observers:
                observers.notify(event)
            hooks.notify(event)
        return prediction

    def validate(
        self,
        instances: list[Any] | np.ndarray,
        *,
        may_hold_booleans: bool = True,
        may_hold_text: bool = True,
    ) -> np.ndarray | list[np.ndarray]:
        """Checked instances in feature order: a float matrix, or one array per feature.
        Raises InvalidInput."""
        if isinstance(instances, np.ndarray):
            return self.schema.from_matrix(instances)
        if not may_hold_booleans:
            matrix = self.schema.from_number_lists(instances, may_hold_text=may_hold_text)
            if matrix is not None:
                return matrix
        rows = self.schema.rows(instances)
        return self.schema.to_array(rows, may_hold_booleans=may_hold_booleans)

    def prepare(self, instances: list[Any] | np.ndarray) -> np.ndarray | pd.DataFrame:
        """The estimator's input for these instances (a matrix or a DataFrame)."""
        return self.sklearn_backend.model_input(self.validate(instances))

    def predict_prepared(self, model_input: Any, *, with_proba: bool = True) -> Prediction:
        """Predict from ``validate``'s or ``prepare``'s output, through the backend; a
        request the compiled backend fails on, or gives NaN or infinite outputs for (it
        computes in float32, where large values overflow), is answered by the pickle.
        Raises NonFiniteOutput naming the instances when scikit-learn refuses values too
        large for its arithmetic; NaN or infinite outputs are returned as they are
        (``predict`` refuses them; batch prediction writes them)."""
        with_proba = with_proba and self.has_proba
        backend = self.backend
        if backend is not self.sklearn_backend:
            try:
                # Probabilities even when only labels are asked for: they cost onnxruntime
                # next to nothing, and only they show a label argmaxed from NaN scores.
                prediction = backend.run(model_input, self.has_proba)
            except Exception as exc:  # onnxruntime raises its own types; never a 500
                self._fell_back(f"{type(exc).__name__}: {str(exc).partition(chr(10))[0]}")
            else:
                if not non_finite_rows(prediction):
                    if not with_proba and prediction.probability_array is not None:
                        prediction = prediction.without_probabilities()
                    return prediction
                self._fell_back("NaN or infinite outputs")
        # The pickle computes in float64, and scikit-learn's input checks at each step of a
        # pipeline refuse an infinity made on the way (below). Scores that overflow in the
        # last step show only in probabilities, which a request for labels alone (MLflow's)
        # does not pay for here: they would double its cost.
        try:
            # Overflow is what the output check and the refusal below are for: numpy's
            # warnings about it would only fill the log.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return self.sklearn_backend.run(model_input, with_proba)
        except ValueError as exc:
            if TOO_LARGE_FOR_SKLEARN not in str(exc):
                raise
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            rows = self._unscorable_rows(model_input, with_proba)
        raise _non_finite_output(rows)

    def _fell_back(self, problem: str) -> None:
        self.fallbacks += 1
        log.warning(
            "%s@%d: onnxruntime could not serve a request (%s); asking the pickle",
            self.name,
            self.version,
            problem,
        )

    def _unscorable_rows(self, model_input: Any, with_proba: bool) -> list[int]:
        """The instances scikit-learn refuses or gives non-finite outputs for, found by
        halving the request (a bad request's cost only), at most MAX_REPORTED_PROBLEMS."""
        found: list[int] = []
        pending = [np.arange(_row_count(model_input))]
        while pending and len(found) < MAX_REPORTED_PROBLEMS:
            rows = pending.pop()
            try:
                prediction = self.sklearn_backend.run(_take(model_input, rows), with_proba)
            except ValueError as exc:
                if TOO_LARGE_FOR_SKLEARN not in str(exc):
                    raise
                if len(rows) == 1:
                    found.append(int(rows[0]))
                else:
                    half = len(rows) // 2
                    pending += [rows[half:], rows[:half]]  # the first half is looked at first
                continue
            found.extend(int(rows[i]) for i in non_finite_rows(prediction))
        return sorted(found)[:MAX_REPORTED_PROBLEMS]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "features": list(self.schema.names),
            "classes": to_list(self.classes) if self.classes is not None else None,
            "backend": self.backend.name,
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
            if to_list(self.classes) != list(meta.get("classes", [])):
                raise ModelLoadError(
                    f"{where}: the estimator's classes {to_list(self.classes)} differ from the "
                    f"metadata's {meta.get('classes')}"
                )

    def _compiled_backend(self, artifact: StoredArtifact) -> SklearnBackend | OnnxBackend:
        """The onnxruntime backend when the metadata vouches for it and its file checks
        out; else the pickle, with a warning when the ONNX form should have served."""
        entry = onnx_backend(self.metadata)
        if not entry.get("available"):
            return self.sklearn_backend
        where = f"{self.name}@{self.version}"
        if not (entry.get("parity") or {}).get("passed"):
            return self._fall_back(f"{entry['file']}: its parity check did not pass")
        try:
            data = artifact.read_file(entry["file"], entry["sha256"], entry["size"])
        except ServiceError as exc:
            return self._fall_back(exc.message.removeprefix(f"{where}: "))
        try:
            return OnnxBackend(
                data,
                self.schema.names,
                task=self.task,
                classes=self.classes,
                has_proba=self.has_proba,
            )
        except Exception as exc:
            return self._fall_back(f"onnxruntime cannot load {entry['file']}: {exc}")

    def _fall_back(self, problem: str) -> SklearnBackend:
        message = f"{problem}; served by the pickle (scikit-learn) instead of onnxruntime"
        self.warnings.append(message)
        log.warning("%s@%d: %s", self.name, self.version, message)
        return self.sklearn_backend

    def _replay_golden(self) -> None:
        golden = self.metadata.get("golden")
        where = f"{self.name}@{self.version}"
        if not golden:
            self.warnings.append("no golden example in the metadata: outputs were not replayed")
            log.warning("%s: no golden example in the metadata; outputs not replayed", where)
            return
        if self.backend is not self.sklearn_backend:
            problem = self._golden_problem(golden, self._compiled_tolerance(golden))
            if problem is None:
                return
            self.backend = self._fall_back(f"the golden example through onnxruntime: {problem}")
        problem = self._golden_problem(golden, golden.get("tolerance", {}))
        if problem is not None:
            raise ModelLoadError(
                f"{where}: the golden example {problem}; refusing to serve it",
                code="golden_mismatch",
            )

    def _compiled_tolerance(self, golden: dict[str, Any]) -> dict[str, float]:
        """The golden tolerance, widened to what the ONNX form's parity check allowed."""
        tolerance = {**DEFAULT_GOLDEN_TOLERANCE, **golden.get("tolerance", {})}
        parity = self.metadata["backends"]["onnx"]["parity"]["tolerance"]
        tolerance["atol"] = max(tolerance["atol"], float(parity.get("atol", 0.0)))
        return tolerance

    def _golden_problem(self, golden: dict[str, Any], tolerance: dict[str, float]) -> str | None:
        tolerance = {**DEFAULT_GOLDEN_TOLERANCE, **tolerance}
        try:
            # Not through predict(): a load-time check is not served traffic. Straight to
            # the backend: a failure here must not be answered by the pickle.
            got = self.backend.run(self.validate(golden["instances"]), self.has_proba)
        except Exception as exc:
            if self.backend is self.sklearn_backend:
                raise ModelLoadError(
                    f"{self.name}@{self.version}: the golden example no longer runs: {exc}"
                ) from exc
            return f"does not run: {type(exc).__name__}: {exc}"
        expected = golden["predictions"]
        if self.task == "classification":
            same = got.predictions == expected
        else:
            same = np.allclose(got.predictions, expected, **tolerance)
        probabilities = got.probability_array
        if same and golden.get("probabilities") is not None and probabilities is not None:
            same = np.allclose(probabilities, golden["probabilities"], **tolerance)
        if same:
            return None
        return (
            "gives other outputs than at training time "
            f"(expected {expected}, got {got.predictions})"
        )


# How scikit-learn's input check words a value its arithmetic cannot take: beyond float32
# for trees, or an infinity a scaler made of a value near the float64 limit.
TOO_LARGE_FOR_SKLEARN = "infinity or a value too large"


def non_finite_rows(prediction: Prediction) -> list[int]:
    """The instances whose regression value or probabilities are NaN or infinite. A sum
    in C over all outputs answers the usual case: finite, so every term is."""
    if prediction.finite:
        return []
    bad: set[int] = set()
    values = prediction.predictions
    if values and isinstance(values[0], float):
        try:
            # Large finite values may add up to infinity: then each is looked at.
            total = sum(values)
        except TypeError:
            total = math.nan
        if not math.isfinite(total):
            bad.update(
                i for i, v in enumerate(values) if not (isinstance(v, float) and math.isfinite(v))
            )
    probabilities = prediction.probability_array
    if probabilities is not None:
        finite_rows = np.isfinite(probabilities).all(axis=1)
        if not finite_rows.all():
            bad.update(np.flatnonzero(~finite_rows).tolist())
    return sorted(bad)


def _non_finite_output(rows: list[int]) -> NonFiniteOutput:
    shown = rows[:MAX_REPORTED_PROBLEMS]
    problem = (
        "the model cannot score it: its output is not a finite number (NaN or infinity); "
        "its values are too large for the model's arithmetic"
    )
    where = f"instance {shown[0]}" if shown else "these instances"
    if len(shown) > 1:
        problem += f" ({len(shown) - 1} more in details)"
    return NonFiniteOutput(
        f"{where}: {problem}",
        details=[{"instance": i, "feature": None, "problem": problem} for i in shown],
    )


def _row_count(model_input: Any) -> int:
    if isinstance(model_input, (np.ndarray, pd.DataFrame)):
        return len(model_input)
    return len(model_input[0])  # one array per feature


def _take(model_input: Any, rows: np.ndarray) -> Any:
    if isinstance(model_input, np.ndarray):
        return model_input[rows]
    if isinstance(model_input, pd.DataFrame):
        return model_input.iloc[rows]
    return [column[rows] for column in model_input]


def load(
    store: ModelStore,
    name: str,
    version: int,
    *,
    refuse_version_mismatch: bool = False,
    backend: str = "auto",
) -> LoadedModel:
    artifact = store.load_artifact(name, version, refuse_version_mismatch=refuse_version_mismatch)
    return LoadedModel(artifact, backend=backend)
