"""The bare onnxruntime handler doing the duties P1 names: the bound of `make bench`'s P1,
and of P3 native on 1,000-row bodies.

P1 asks the service, with validation, metrics, logs and monitoring on, to reach 0.90 of
the bare handler (loadtests/naive_onnx_app.py), which does none of them. This handler
makes the same onnxruntime call on the same session and does each duty in about the
least work that still keeps its promise, with the libraries the service uses:

- validation: the body must be ``{"instances": [[...], ...]}`` of finite numbers, one
  list per row of the model's width; anything else gets a 400 with a JSON error;
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
  classes, the model and version.

It does no more: no API keys, no aliases or experiments, no reloads, no shadow, no
feedback join, no persistence of the drift counts. So its rate is the most a handler
doing P1's duties reaches on this machine, on one row and on 1,000 (the same body as the
bare handler's: rows of numbers), measured in the same run as the service and the bare
handler. Served exactly like them:

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

from loadtests.benchlib.onnx_reference import DUTIES_LOG_ENV, MODEL_PATH_ENV, open_session
from loadtests.hello_app import add_health_routes

ROUTE = "/predict"
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
bin_offsets = np.arange(WIDTH) * BINS
drift_counts = np.zeros(WIDTH * BINS, dtype=np.int64)

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
served_requests = requests_total.labels(ROUTE, MODEL, "200")
refused_requests = requests_total.labels(ROUTE, MODEL, "400")
latency = request_seconds.labels(ROUTE, MODEL)
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


def refuse(message: str, request_id: str, started: float) -> Response:
    refused_requests.inc()
    latency.observe(time.perf_counter() - started)
    request_log.write({"request_id": request_id, "route": ROUTE, "status": 400})
    body = orjson.dumps({"error": {"code": "invalid_input", "message": message}})
    return Response(body, status=400, mimetype="application/json")


@app.post(ROUTE)
def predict():
    started = time.perf_counter()
    request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
    try:
        instances = orjson.loads(request.get_data(cache=False))["instances"]
        rows = np.asarray(instances, dtype=np.float64)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return refuse("the body must be {'instances': [[numbers], ...]}", request_id, started)
    if rows.ndim != 2 or rows.shape[1] != WIDTH or not np.isfinite(rows).all():
        return refuse(f"each instance must be {WIDTH} finite numbers", request_id, started)
    results = session.run(output_names, {input_name: rows})
    predictions = results[0].reshape(-1)
    # orjson writes numeric arrays itself; string labels come as Python strings.
    labels = predictions.tolist()
    # Monitoring: the features' bins and the predictions' distribution.
    bins = (rows[:, :, None] >= inner_edges).sum(axis=2) + bin_offsets
    drift_counts[:] += np.bincount(bins.ravel(), minlength=drift_counts.size)
    if classes:
        count_classes(labels)
    else:
        observe_values(predictions)
    answer = {
        "model": MODEL,
        "version": VERSION,
        "predictions": labels if predictions.dtype == object else predictions,
    }
    if len(results) > 1:
        answer["probabilities"] = results[1]
        answer["classes"] = classes
    answer["request_id"] = request_id
    body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    seconds = time.perf_counter() - started
    served_requests.inc()
    latency.observe(seconds)
    request_log.write(
        {
            "timestamp": time.time(),
            "request_id": request_id,
            "route": ROUTE,
            "model": MODEL,
            "version": VERSION,
            "status": 200,
            "instances": len(rows),
            "latency_ms": round(seconds * 1000.0, 3),
        }
    )
    response = Response(body, mimetype="application/json")
    response.headers["X-Request-ID"] = request_id
    return response


add_health_routes(app)
