"""The bare onnxruntime handler doing the duties P1 names: the bound of `make bench`'s P1,
and of P3's on 1,000-row bodies, native (JSON rows of numbers) and v2 binary.

P1 asks the service, with validation, metrics, logs and monitoring on, to reach 0.90 of
the bare handler (loadtests/naive_onnx_app.py), which does none of them. This handler
makes the same onnxruntime call on the same session and does each duty in about the
least work that still keeps its promise, with the libraries the service uses:

- validation: the body must be ``{"instances": [[...], ...]}`` of finite numbers, one
  list per row of the model's width (or, on its v2 binary route, a v2 header naming one
  FP64 input of that width and its raw values); anything else gets a 400 with a JSON
  error;
- a request id: the client's ``X-Request-ID`` or a new one, echoed in a header;
- metrics: prometheus_client in multiprocess mode (Gunicorn's workers), a request
  counter by route, model and status and a latency histogram;
- monitoring: the predictions' classes counted (classifiers), or their values observed in
  a histogram (regressors), a batch's at once (one increment per class or bucket, as the
  service does), and every feature of every row binned against the training
  histogram edges of the version's metadata.yaml (what drift is computed from), the
  counts kept in the worker's memory;
- logs: one JSON line a request (time, id, route, model, status, rows, latency) through
  orjson into a buffered file, written when its buffer fills;
- the answer the service gives: the predictions, a classifier's probabilities and
  classes, the model and version (on the v2 binary route, both outputs as raw bytes
  after a JSON header, as the service answers that body).

It does no more: no API keys, no aliases or experiments, no reloads, no shadow, no
feedback join, no persistence of the drift counts. So its rate is the most a handler
doing P1's duties reaches on this machine, on one row and on 1,000 (the bare handler's
body, rows of numbers, and the service's v2 binary one), measured in the same run as the
service and the bare handler. Served exactly like them:

    LocalStack(app="loadtests.duties_app:app", extra_env={"BENCH_NAIVE_ONNX": path}, ...)
"""

from __future__ import annotations

import collections
import os
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import yaml
from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Counter, Histogram

from loadtests.benchlib.onnx_reference import (
    DUTIES_BINARY_PATH,
    DUTIES_LOG_ENV,
    MODEL_PATH_ENV,
    open_session,
)
from loadtests.hello_app import add_health_routes

ROUTE = "/predict"
# The same duties on the Open Inference Protocol's binary tensor extension (P3 v2 binary).
BINARY_ROUTE = DUTIES_BINARY_PATH
ROUTES = (ROUTE, BINARY_ROUTE)
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MIMETYPE = "application/octet-stream"
LOG_BUFFER_BYTES = 8192

session = open_session()
input_name = session.get_inputs()[0].name
version_dir = Path(os.environ[MODEL_PATH_ENV]).parent
metadata = yaml.safe_load((version_dir / "metadata.yaml").read_text())
MODEL = metadata["name"]
VERSION = metadata["version"]
features = metadata["input"]["features"]
WIDTH = len(features)
classes = metadata.get("classes")
outputs = session.get_outputs()
output_names = [o.name for o in outputs[:2]] if classes and len(outputs) > 1 else [outputs[0].name]

# Drift: each feature's inner training-histogram edges, padded with +inf to one width;
# a value's bin is how many inner edges lie at or below it.
edge_lists = [f["stats"]["histogram"]["edges"] for f in features]
BINS = max(len(edges) - 1 for edges in edge_lists)
inner_edges = np.full((WIDTH, BINS - 1), np.inf)
for column, edges in enumerate(edge_lists):
    inner_edges[column, : len(edges) - 2] = edges[1:-1]
bin_offsets = np.arange(WIDTH)[:, None] * BINS
drift_counts = np.zeros(WIDTH * BINS, dtype=np.int64)
# One (WIDTH, 1) column per inner edge: each feature's own edge, compared along its row.
edge_columns = [inner_edges[:, [edge]] for edge in range(BINS - 1)]

# A registry of its own: the bench loads this module once per model in one process.
# (Under Gunicorn, PROMETHEUS_MULTIPROC_DIR makes every value a write to the worker's
# multiprocess file, whichever registry holds the metric.)
registry = CollectorRegistry()
requests_total = Counter(
    "bench_requests", "Requests", ["route", "model", "status"], registry=registry
)
request_seconds = Histogram(
    "bench_request_seconds", "Request latency", ["route", "model"], registry=registry
)
class_total = Counter(
    "bench_predicted_class", "Predictions by class", ["model", "label"], registry=registry
)
# A regressor's value buckets span its test set's targets, as the service's do.
targets = metadata.get("scores", {}).get("test", {}).get("points", {}).get("actual")
value_histogram = Histogram(
    "bench_predicted_value",
    "Predicted values",
    ["model"],
    buckets=np.linspace(min(targets), max(targets), 11) if targets else Histogram.DEFAULT_BUCKETS,
    registry=registry,
)
served_requests = {route: requests_total.labels(route, MODEL, "200") for route in ROUTES}
latencies = {route: request_seconds.labels(route, MODEL) for route in ROUTES}
class_children = {label: class_total.labels(MODEL, str(label)) for label in classes or ()}
values = value_histogram.labels(MODEL)


class RequestLog:
    """JSON lines into a file, a buffer at a time (opened in each worker on first use)."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None
        self.pid = None

    def write(self, fields: dict) -> None:
        if self.pid != os.getpid():
            self.handle = open(self.path, "ab", buffering=LOG_BUFFER_BYTES)  # noqa: SIM115
            self.pid = os.getpid()
        self.handle.write(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))


def count_bins(rows: np.ndarray) -> None:
    """Every feature of every row binned, at about the least numpy work: features as rows,
    one comparison per edge into a reused buffer, as the service's drift binning does.
    Comparing a rows × features × edges block at once takes twice as long on 30
    features, which would make this bound too easy to beat."""
    values = np.ascontiguousarray(rows.T)
    index = np.zeros(values.shape, dtype=np.uint8)
    above = np.empty(values.shape, dtype=bool)
    for edges in edge_columns:
        np.greater_equal(values, edges, out=above)
        index += above.view(np.uint8)
    bins = index.astype(np.intp) + bin_offsets
    drift_counts[:] += np.bincount(bins.ravel(), minlength=drift_counts.size)


def count_classes(labels: list) -> None:
    """Each predicted class counted: one increment per class present, not per row."""
    if len(labels) == 1:
        class_children[labels[0]].inc()
        return
    for label, count in collections.Counter(labels).items():
        class_children[label].inc(count)


def observe_values(predictions: np.ndarray) -> None:
    """Histogram.observe for a whole batch: one increment per bucket a value falls in (the
    first whose upper bound is at or above it, as observe does), and one to the sum."""
    if len(predictions) == 1:
        values.observe(float(predictions[0]))
        return
    upper = values._upper_bounds
    counts = np.bincount(np.searchsorted(upper, predictions, side="left"), minlength=len(upper))
    values._sum.inc(float(predictions.sum()))
    for index in np.flatnonzero(counts):
        values._buckets[index].inc(float(counts[index]))


request_log = RequestLog(Path(os.environ.get(DUTIES_LOG_ENV, os.devnull)))
app = Flask("duties-onnx")


def refuse(route: str, message: str, request_id: str, started: float) -> Response:
    requests_total.labels(route, MODEL, "400").inc()
    request_seconds.labels(route, MODEL).observe(time.perf_counter() - started)
    request_log.write({"request_id": request_id, "route": route, "status": 400})
    body = orjson.dumps({"error": {"code": "invalid_input", "message": message}})
    return Response(body, status=400, mimetype="application/json")


def predict_rows(rows: np.ndarray) -> tuple[np.ndarray, list | None, np.ndarray | None]:
    """The model's call on validated rows, and its monitoring: the predictions, a
    classifier's labels as Python values (made once: counted, then answered) and its
    probabilities."""
    results = session.run(output_names, {input_name: rows})
    predictions = results[0].reshape(-1)
    # Monitoring: the features' bins and the predictions' distribution.
    count_bins(rows)
    labels = predictions.tolist() if classes or predictions.dtype == object else None
    if classes:
        count_classes(labels)
    else:
        observe_values(predictions)
    return predictions, labels, results[1] if len(results) > 1 else None


def served(
    route: str,
    request_id: str,
    started: float,
    rows: int,
    body: bytes,
    mimetype: str = "application/json",
) -> Response:
    """The metrics and the log line of an answered request, and its response."""
    seconds = time.perf_counter() - started
    served_requests[route].inc()
    latencies[route].observe(seconds)
    request_log.write(
        {
            "timestamp": time.time(),
            "request_id": request_id,
            "route": route,
            "model": MODEL,
            "version": VERSION,
            "status": 200,
            "instances": rows,
            "latency_ms": round(seconds * 1000.0, 3),
        }
    )
    response = Response(body, mimetype=mimetype)
    response.headers["X-Request-ID"] = request_id
    return response


@app.post(ROUTE)
def predict():
    started = time.perf_counter()
    request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
    try:
        instances = orjson.loads(request.get_data(cache=False))["instances"]
        rows = np.asarray(instances, dtype=np.float64)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        message = "the body must be {'instances': [[numbers], ...]}"
        return refuse(ROUTE, message, request_id, started)
    if rows.ndim != 2 or rows.shape[1] != WIDTH or not np.isfinite(rows).all():
        message = f"each instance must be {WIDTH} finite numbers"
        return refuse(ROUTE, message, request_id, started)
    predictions, labels, probabilities = predict_rows(rows)
    answer = {
        "model": MODEL,
        "version": VERSION,
        # orjson writes numeric arrays itself; string labels go as Python strings.
        "predictions": labels if predictions.dtype == object else predictions,
    }
    if probabilities is not None:
        answer["probabilities"] = probabilities
        answer["classes"] = classes
    answer["request_id"] = request_id
    body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    return served(ROUTE, request_id, started, len(rows), body)


@app.post(BINARY_ROUTE)
def infer_binary():
    """The same on the Open Inference Protocol's binary tensor extension, as the service
    takes it: a JSON header of Inference-Header-Content-Length bytes naming one FP64
    input of shape [rows, width], its raw little-endian values after it; every output
    answered as raw bytes after a JSON header too."""
    started = time.perf_counter()
    request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
    body = request.get_data(cache=False)
    try:
        length = int(request.headers[HEADER_LENGTH])
        tensor = orjson.loads(body[:length])["inputs"][0]
        shape = tensor["shape"]
        raw = body[length:]
        size = tensor["parameters"]["binary_data_size"]
        if tensor["datatype"] != "FP64" or shape[1:] != [WIDTH]:
            raise ValueError
        if not size == len(raw) == shape[0] * WIDTH * 8:
            raise ValueError
        rows = np.frombuffer(raw, dtype="<f8").reshape(shape)
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        message = f"the body must be a v2 header and one FP64 input of shape [n, {WIDTH}]"
        return refuse(BINARY_ROUTE, message, request_id, started)
    if not np.isfinite(rows).all():
        return refuse(BINARY_ROUTE, "every value must be finite", request_id, started)
    predictions, labels, probabilities = predict_rows(rows)
    if predictions.dtype == object:
        outputs = [("predict", "BYTES", [len(rows)], framed_texts(labels))]
    else:
        kind = "INT64" if predictions.dtype.kind in "iu" else "FP64"
        dtype = "<i8" if kind == "INT64" else "<f8"
        outputs = [("predict", kind, [len(rows)], predictions.astype(dtype).tobytes())]
    if probabilities is not None:
        data = probabilities.astype("<f8").tobytes()
        outputs.append(("probabilities", "FP64", list(probabilities.shape), data))
    header = orjson.dumps(
        {
            "model_name": MODEL,
            "model_version": str(VERSION),
            "id": request_id,
            "outputs": [
                {"name": n, "datatype": t, "shape": s, "parameters": {"binary_data_size": len(d)}}
                for n, t, s, d in outputs
            ],
        }
    )
    body = header + b"".join(data for *_, data in outputs)
    response = served(BINARY_ROUTE, request_id, started, len(rows), body, BINARY_MIMETYPE)
    response.headers[HEADER_LENGTH] = str(len(header))
    return response


def framed_texts(labels: list) -> bytes:
    """BYTES elements: each label's 4-byte little-endian length and UTF-8 text, a class
    framed once and the rows looked up in C."""
    framed = {}
    for label in set(labels):
        text = str(label).encode()
        framed[label] = len(text).to_bytes(4, "little") + text
    return b"".join(map(framed.__getitem__, labels))


add_health_routes(app)
