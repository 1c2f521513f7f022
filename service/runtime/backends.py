"""How a loaded model computes: the unpickled estimator, or a compiled onnxruntime session.

Both take what ``InputSchema.to_array`` makes of validated instances (a float64 matrix,
or one array per feature) or a model input ``SklearnBackend.model_input`` made of it (a
DataFrame), and give a ``Prediction`` with the same Python values and types: labels are
``LoadedModel.classes`` as plain values, probabilities and regression values floats.

The ONNX form is used only when the metadata says it matched the pickle on held-out rows
at publish (``backends.onnx.parity.passed``), its file has the recorded sha256, and
onnxruntime loads it; otherwise, and for any request onnxruntime fails on, the pickle
serves (``LoadedModel`` decides). A session is prepared once per model: input names and
dtypes, the outputs to ask for, the map from ONNX labels back to the model's classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

SKLEARN = "sklearn"
ONNXRUNTIME = "onnxruntime"
CHOICES = ("auto", SKLEARN)  # the backend setting: auto uses onnxruntime where it may

_ONNX_DTYPES = {
    "tensor(double)": np.dtype(np.float64),
    "tensor(float)": np.dtype(np.float32),
    "tensor(string)": np.dtype(object),
}


class Prediction:
    """One call's outputs: labels or values as plain Python values, and for classifiers
    asked for them, the probabilities.

    A backend hands its probabilities over as the array it computed them in (float64
    from scikit-learn and from a form converted in double, float32 from one converted in
    float). The answer writes that array as it is (orjson writes a float32 with the
    digits a float32 holds), so a request pays neither for turning it into lists nor for
    seventeen digits of float32 noise per value; the lists are made only when something
    reads ``probabilities``.
    """

    __slots__ = ("_probability_lists", "backend", "finite", "predictions", "probability_array")

    def __init__(
        self,
        predictions: list[Any],
        probabilities: np.ndarray | list[list[float]] | None = None,
        backend: str = SKLEARN,  # which backend computed this prediction
        # True when the backend saw every output finite in its own arrays, so the check
        # of the outputs (runtime.model.non_finite_rows) has nothing to find; None: not
        # looked at.
        finite: bool | None = None,
    ):
        self.predictions = predictions
        if probabilities is not None and not isinstance(probabilities, np.ndarray):
            probabilities = np.asarray(probabilities, dtype=np.float64)
        self.probability_array = probabilities
        self._probability_lists: list[list[float]] | None = None
        self.backend = backend
        self.finite = finite

    @property
    def probabilities(self) -> list[list[float]] | None:
        """The probabilities as lists of Python floats, one list per instance."""
        if self._probability_lists is None and self.probability_array is not None:
            self._probability_lists = self.probability_array.astype(np.float64, copy=False).tolist()
        return self._probability_lists

    def without_probabilities(self) -> Prediction:
        return Prediction(self.predictions, None, self.backend, self.finite)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prediction):
            return NotImplemented
        return (
            self.predictions == other.predictions
            and self.probabilities == other.probabilities
            and self.backend == other.backend
            and self.finite == other.finite
        )

    __hash__ = None  # mutable: never a key

    def __repr__(self) -> str:
        return (
            f"Prediction({self.predictions!r}, {self.probabilities!r}, {self.backend!r}, "
            f"{self.finite!r})"
        )


class BackendError(Exception):
    """The compiled backend cannot take this input or gave an output it cannot map."""


class SklearnBackend:
    """The unpickled estimator or Pipeline."""

    name = SKLEARN

    def __init__(self, estimator: Any, names: tuple[str, ...]):
        self.estimator = estimator
        self._names = list(names)
        # An estimator fitted on a DataFrame wants one back; else a plain matrix is cheapest.
        self.feature_names = getattr(estimator, "feature_names_in_", None)

    def model_input(self, values: Any) -> np.ndarray | pd.DataFrame:
        """What the estimator predicts from: the matrix itself, or a DataFrame of it."""
        if isinstance(values, pd.DataFrame):
            return values
        if isinstance(values, np.ndarray):
            if self.feature_names is None:
                return values
            return pd.DataFrame(values, columns=self._names)
        return pd.DataFrame(dict(zip(self._names, values, strict=True)))

    def run(self, values: Any, with_proba: bool) -> Prediction:
        model_input = self.model_input(values)
        if with_proba:
            probabilities = self.estimator.predict_proba(model_input)
            # argmax over predict_proba is what predict does for sklearn classifiers,
            # but not for every estimator: ask predict itself to stay exact.
            labels = self.estimator.predict(model_input)
            return Prediction(to_list(labels), probabilities, SKLEARN)
        return Prediction(to_list(self.estimator.predict(model_input)), None, SKLEARN)


class OnnxBackend:
    """An onnxruntime session over the model's ONNX bytes, one thread, no arena."""

    name = ONNXRUNTIME

    def __init__(
        self,
        data: bytes,
        names: tuple[str, ...],
        *,
        task: str,
        classes: list[Any] | None,
        has_proba: bool,
    ):
        import onnxruntime  # only processes that serve a compiled model pay for the import

        options = onnxruntime.SessionOptions()
        # Gunicorn runs one process per core: a pool of threads per session would only
        # compete with the other workers (and would not survive the fork of preload_app).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # The arena keeps the largest batch's buffers for good; with many workers and
        # models, allocating per run costs less memory for a few microseconds.
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            data, options, providers=["CPUExecutionProvider"]
        )
        self.size = len(data)
        inputs = self.session.get_inputs()
        input_names = [entry.name for entry in inputs]
        self._dtypes = []
        for entry in inputs:
            if entry.type not in _ONNX_DTYPES:
                raise BackendError(f"input {entry.name!r} is a {entry.type}")
            self._dtypes.append(_ONNX_DTYPES[entry.type])
        if input_names == list(names):
            self.layout = "columns"
        elif len(inputs) == 1 and inputs[0].shape[-1] in (len(names), None, "None"):
            self.layout = "matrix"
        else:
            raise BackendError(
                f"the ONNX inputs {input_names} fit neither one matrix nor the features "
                f"{list(names)}"
            )
        self._input_names = input_names
        self._classification = task == "classification"
        outputs = [entry.name for entry in self.session.get_outputs()]
        self._first_output = outputs[:1]
        self._both_outputs = outputs[:2]
        if self._classification:
            if classes is None:
                raise BackendError("a classifier without classes")
            if has_proba and len(outputs) < 2:
                raise BackendError("the ONNX graph gives no probabilities")
            # ONNX gives labels as int64 or strings: back to the classes' own values.
            self._labels = {label: label for label in to_list(classes)}
            self._label_set = frozenset(self._labels)
            # Text or integer classes come out of onnxruntime as they are: a membership
            # check in C will do. Others (booleans) are mapped back to their own values.
            self._labels_as_given = all(type(c) is str for c in self._labels) or all(
                type(c) is int for c in self._labels
            )
            self._width = len(classes)

    def run(self, values: Any, with_proba: bool) -> Prediction:
        feed = self._feed(values)
        if not self._classification:
            (output,) = self.session.run(self._first_output, feed)
            values = output.reshape(-1).astype(np.float64, copy=False)
            return Prediction(values.tolist(), None, ONNXRUNTIME, _all_finite(values))
        if with_proba:
            labels, probabilities = self.session.run(self._both_outputs, feed)
            if probabilities.ndim != 2 or probabilities.shape[1] != self._width:
                raise BackendError(f"probabilities of shape {probabilities.shape}")
            finite = _all_finite(probabilities)
            proba = probabilities
        else:
            (labels,) = self.session.run(self._first_output, feed)
            proba, finite = None, True
        predicted = labels.reshape(-1).tolist()
        if self._labels_as_given:
            if not self._label_set.issuperset(predicted):
                unknown = next(label for label in predicted if label not in self._label_set)
                raise BackendError(f"label {unknown!r} is not one of the classes")
        else:
            mapping = self._labels
            try:
                predicted = [mapping[label] for label in predicted]
            except KeyError as exc:
                raise BackendError(f"label {exc.args[0]!r} is not one of the classes") from None
        return Prediction(predicted, proba, ONNXRUNTIME, finite)

    def _feed(self, values: Any) -> dict[str, np.ndarray]:
        if self.layout == "matrix":
            if isinstance(values, pd.DataFrame):
                values = values.to_numpy(dtype=np.float64)
            elif not isinstance(values, np.ndarray):
                values = np.column_stack(values).astype(np.float64)
            dtype = self._dtypes[0]
            return {self._input_names[0]: values if values.dtype == dtype else values.astype(dtype)}
        if isinstance(values, pd.DataFrame):
            columns = [values[name].to_numpy() for name in self._input_names]
        elif isinstance(values, np.ndarray):
            columns = [values[:, index] for index in range(values.shape[1])]
        else:
            columns = values
        feed = {}
        for name, dtype, column in zip(self._input_names, self._dtypes, columns, strict=True):
            if dtype.kind == "O":
                # A missing category left as NaN (no fill value) has no ONNX string form.
                if not all(type(value) is str for value in column):
                    raise BackendError(f"feature {name!r} holds a value that is not a string")
                feed[name] = np.asarray(column, dtype=object).reshape(-1, 1)
            else:
                feed[name] = np.asarray(column, dtype=dtype).reshape(-1, 1)
        return feed


def to_list(values: Any) -> list[Any]:
    if isinstance(values, np.ndarray):
        return values.tolist()
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _all_finite(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).all())
