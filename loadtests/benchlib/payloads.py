"""What the benchmarks send and how an answer is judged: one request (path, body, headers,
the answer it expects), the demo models' rows in each protocol's form (native JSON, the
Open Inference Protocol v2 as JSON and binary tensors, MLflow's dataframe), warm-up and
the median of in-process timings."""

from __future__ import annotations

import dataclasses
import http.client
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.model import LoadedModel
from service.store import ModelStore
from service.store.metadata import onnx_backend
from service.training.demo import demo_specs
from service.training.split import prepare

from .loads import JSON_HEADERS, check_loopback
from .settings import REQUEST_TIMEOUT_S, SEED, BenchError

NAIVE_PATH = "/predict"
IRIS = "iris-classifier"
FOREST = "breast-cancer-classifier"
REGRESSOR = "diabetes-regressor"
SKLEARN_BACKEND = "sklearn"
NO_BACKEND = "-"
BATCH_ROWS = 1_000
WARM_UP_REQUESTS = 20
# Timed repetitions of a 1,000-row request and of each in-process call:
# at least MIN_REPEATS, then more until the time budget or MAX_REPEATS runs out.
MIN_REPEATS = 3
MAX_REPEATS = 50


@dataclasses.dataclass(frozen=True)
class Request:
    """One request the bench sends, and how many predictions its answer must hold."""

    label: str
    path: str
    body: bytes
    rows: int
    headers: dict[str, str] = dataclasses.field(default_factory=lambda: dict(JSON_HEADERS))
    # How to count the predictions in an answer: "json" ({"predictions": [...]}), "v2"
    # (Open Inference Protocol outputs, JSON or binary), or "none" (hello: any 200 will do).
    answer: str = "json"


def send(connection: http.client.HTTPConnection, request: Request) -> tuple[int, bytes, dict]:
    connection.request("POST", request.path, body=request.body, headers=request.headers)
    response = connection.getresponse()
    return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}


def check_answer(request: Request, status: int, answer: bytes, headers: dict) -> str:
    """Raise unless the answer holds request.rows predictions; return the backend it names."""
    what = f"{request.label} {request.path}"
    if status != 200:
        raise BenchError(f"{what}: expected 200, got {status}: {answer[:300]!r}")
    if request.answer == "none":
        return NO_BACKEND
    if request.answer == "v2":
        length = int(headers.get(V2_HEADER_LENGTH.lower()) or len(answer))
        if V2_BINARY_HEADERS.items() <= request.headers.items() and length == len(answer):
            raise BenchError(f"{what}: the answer is not in the binary tensor format")
        document = json.loads(answer[:length])
        answered = next(o["shape"][0] for o in document["outputs"] if o["name"] == "predict")
    else:
        document = json.loads(answer)
        answered = len(document["predictions"])
    if answered != request.rows:
        raise BenchError(f"{what}: expected {request.rows} predictions, got {answered}")
    return backend_of(document)


def backend_of(document: Any) -> str:
    """The backend an answer names: {"backend": ...}, or in a v2 answer's parameters."""
    if not isinstance(document, dict):
        return NO_BACKEND
    for holder in (document, document.get("parameters")):
        if isinstance(holder, dict) and isinstance(holder.get("backend"), str):
            return holder["backend"]
    return NO_BACKEND


def backend_name(model: LoadedModel) -> str:
    backend = getattr(model, "backend", None)
    return str(getattr(backend, "name", NO_BACKEND))


def warm_up(base_url: str, request: Request, count: int = WARM_UP_REQUESTS) -> str:
    """A few untimed requests, so every worker has run the code path once before timing;
    returns the backend the first answer names."""
    host, port, _ = check_loopback(base_url)
    backend = None
    for _ in range(count):
        # A new connection each time lets the kernel hand requests to different workers.
        connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
        try:
            named = check_answer(request, *send(connection, request))
        finally:
            connection.close()
        backend = named if backend is None else backend
    return backend or NO_BACKEND


def median_seconds(call: Callable[[], object], budget_s: float) -> float:
    """Median wall time of `call`: MIN_REPEATS runs, then more within the budget."""
    call()  # untimed: first-call costs (caches, lazy imports) are not what we measure
    times: list[float] = []
    deadline = time.monotonic() + budget_s
    while len(times) < MAX_REPEATS and (len(times) < MIN_REPEATS or time.monotonic() < deadline):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@dataclasses.dataclass
class DemoPayload:
    name: str
    version: int
    instances: list[dict[str, Any]]
    features: list[str]
    pickle_path: Path
    onnx_path: Path | None  # the compiled form, when it passed parity at publish
    # A classifier with predict_proba: the service's answer carries its probabilities.
    answers_probabilities: bool

    def matrix(self, rows: int) -> list[list[Any]]:
        return [[instance[f] for f in self.features] for instance in self.instances[:rows]]

    def objects_body(self, rows: int) -> bytes:
        return json.dumps({"instances": self.instances[:rows]}).encode()

    def lists_body(self, rows: int) -> bytes:
        return json.dumps({"instances": self.matrix(rows)}).encode()


def demo_payloads(store: ModelStore) -> list[DemoPayload]:
    """BATCH_ROWS real rows per demo model, drawn (with replacement) from its dataset."""
    rng = np.random.default_rng(SEED)
    payloads = []
    for demo in demo_specs():
        version = store.aliases(demo.name)["production"]
        metadata = store.metadata(demo.name, version)
        dtypes = {f["name"]: f["dtype"] for f in metadata["input"]["features"]}
        plan, _ = prepare(demo)
        names = list(plan.X.columns)
        data = plan.X.to_numpy(dtype=np.float64)
        picks = rng.integers(0, len(data), size=BATCH_ROWS)
        instances = [
            {
                name: int(value) if dtypes[name] == "int64" else float(value)
                for name, value in zip(names, data[i], strict=True)
            }
            for i in picks
        ]
        version_dir = store.layout.version_dir(demo.name, version)
        onnx = onnx_backend(metadata)
        onnx_path = version_dir / onnx["file"] if onnx.get("available") else None
        pickle_path = version_dir / metadata["artifact"]["file"]
        with_proba = metadata["task"] == "classification"  # the demo classifiers all have it
        payloads.append(
            DemoPayload(demo.name, version, instances, names, pickle_path, onnx_path, with_proba)
        )
    return payloads


# The protocols the service speaks, each a slug (for keys), a label and how to build it.
NATIVE = "native"  # {"instances": [{feature: value}, ...]}: the documented form
NATIVE_LISTS = "native-lists"  # {"instances": [[...], ...]}: the naive handler's body
V2_JSON, V2_BINARY, MLFLOW_FORMAT = "v2-json", "v2-binary", "mlflow-format"
PROTOCOL_LABELS = {
    NATIVE: "native (objects)",
    NATIVE_LISTS: "native (lists)",
    V2_JSON: "v2 JSON",
    V2_BINARY: "v2 binary",
    MLFLOW_FORMAT: "MLflow format",
}
V2_INPUT = "input-0"
V2_HEADER_LENGTH = "Inference-Header-Content-Length"
V2_BINARY_HEADERS = {"Content-Type": "application/octet-stream"}


def service_request(protocol: str, payload: DemoPayload, rows: int) -> Request:
    label = f"{payload.name} {PROTOCOL_LABELS[protocol]}"
    if protocol == NATIVE:
        return Request(
            label, f"/v1/models/{payload.name}/predict", payload.objects_body(rows), rows
        )
    if protocol == NATIVE_LISTS:
        return Request(label, f"/v1/models/{payload.name}/predict", payload.lists_body(rows), rows)
    matrix = payload.matrix(rows)
    if protocol == MLFLOW_FORMAT:
        body = {"dataframe_split": {"columns": payload.features, "data": matrix}}
        return Request(
            label, f"/v1/models/{payload.name}/invocations", json.dumps(body).encode(), rows
        )
    path = f"/v2/models/{payload.name}/infer"
    tensor = {"name": V2_INPUT, "shape": [rows, len(payload.features)], "datatype": "FP64"}
    if protocol == V2_JSON:
        body = {"inputs": [{**tensor, "data": [v for row in matrix for v in row]}]}
        return Request(label, path, json.dumps(body).encode(), rows, answer="v2")
    # The binary tensor data extension, as tritonclient sends it by default: a JSON header,
    # then the raw little-endian float64 values; outputs come back binary too.
    raw = np.asarray(matrix, dtype="<f8").tobytes()
    header = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }
    header_bytes = json.dumps(header).encode()
    headers = {**V2_BINARY_HEADERS, V2_HEADER_LENGTH: str(len(header_bytes))}
    return Request(label, path, header_bytes + raw, rows, headers, answer="v2")


def naive_request(payload: DemoPayload, rows: int) -> Request:
    return Request(f"naive {payload.name}", NAIVE_PATH, payload.lists_body(rows), rows)


def mlflow_serve_request(payload: DemoPayload, rows: int) -> Request:
    body = {"dataframe_split": {"columns": payload.features, "data": payload.matrix(rows)}}
    return Request(f"mlflow {payload.name}", "/invocations", json.dumps(body).encode(), rows)
