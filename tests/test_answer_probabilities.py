"""The probabilities in a native answer are written from the backend's own array."""

from __future__ import annotations

import numpy as np
import orjson
from flask import Flask

from service.api import json_response
from service.protocols import native
from service.runtime.backends import ONNXRUNTIME, Prediction


class _Model:
    name, version, classes = "m", 1, ["a", "b", "c"]


def _answer(prediction: Prediction) -> bytes:
    body = native.encode_prediction(_Model(), prediction, "r1")
    with Flask(__name__).app_context():
        return json_response(body).get_data()


def _rows(dtype) -> np.ndarray:
    return np.random.default_rng(7).dirichlet([1, 1, 1], size=50).astype(dtype)


def test_float64_probabilities_are_written_as_the_lists_would_be():
    array = _rows(np.float64)
    prediction = Prediction(["a"] * 50, array, ONNXRUNTIME, True)
    from_array = _answer(prediction)
    # The body as it was written from lists of Python floats.
    body = native.encode_prediction(_Model(), prediction, "r1")
    body["probabilities"] = array.tolist()
    with Flask(__name__).app_context():
        from_lists = json_response(body).get_data()
    assert from_array == from_lists
    assert orjson.loads(from_array)["probabilities"] == array.tolist()


def test_float32_probabilities_carry_the_digits_a_float32_holds():
    array = _rows(np.float32)
    answer = _answer(Prediction(["a"] * 50, array, ONNXRUNTIME, True))
    written = orjson.loads(answer)["probabilities"]
    # Each value reads back to the very float32 the backend computed ...
    assert np.array_equal(np.asarray(written, dtype=np.float32), array)
    # ... in fewer characters than its float64 widening takes.
    widened = orjson.dumps(array.astype(np.float64).tolist())
    assert len(orjson.dumps(written)) < 0.8 * len(widened)


def test_an_array_orjson_cannot_write_goes_out_as_lists():
    array = np.asfortranarray(_rows(np.float64))[:, ::-1]  # neither C-contiguous nor copied
    prediction = Prediction(["a"] * 50, array, ONNXRUNTIME, True)
    assert native.json_probabilities(prediction) == array.tolist()
    assert orjson.loads(_answer(prediction))["probabilities"] == array.tolist()


def test_lists_are_made_once_and_only_when_read():
    array = _rows(np.float32)
    prediction = Prediction(["a"] * 50, array, ONNXRUNTIME, True)
    assert prediction._probability_lists is None
    lists = prediction.probabilities
    assert lists == array.astype(np.float64).tolist()
    assert prediction.probabilities is lists
    assert prediction.without_probabilities().probabilities is None
