"""`make bench`: how fast and how large the service is, next to a hello-world ceiling.

One bounded run on 127.0.0.1 that prints one table:

1. Single-row predictions through Nginx for each demo model (requests/s, p50, p99),
   next to the same figures for loadtests/hello_app.py served by the same Gunicorn
   config, worker count and Nginx, and the ratio model / hello.
2. One 1,000-row request through Nginx, in rows/s, next to the same rows predicted
   in-process by LoadedModel.predict and by the raw estimator.predict.
3. The protocols side by side: single-row requests/s for iris-classifier through the
   native API, Open Inference Protocol v2 JSON, v2 with the binary tensor extension and
   MLflow's dataframe_split, then one 1,000-row request of each model in each (rows/s).
4. Memory: total PSS of the Gunicorn master and workers, and one worker's PSS
   (from /proc/PID/smaps_rollup, read after the load).
5. The cost of monitoring: the single-row load of each demo model again, on a stack
   started with MODEL_SERVICE_METRICS=false and MODEL_SERVICE_REQUEST_LOG=false, next
   to the figures of step 1 (requests/s on, off, and on ÷ off).

Load comes from wrk when it is on PATH (a Lua script POSTs the JSON body), otherwise
from a small built-in closed-loop generator (threads, each with one keep-alive
http.client connection); the output names the one used. The demo models are
trained into a temporary store, and the three stacks run one after the other on free
ports, so they never compete for the CPUs; each is stopped by pid.

    .venv/bin/python loadtests/bench.py [--duration 10] [--connections 16] [--workers 2]
                                        [--json results.json] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from threadpoolctl import threadpool_limits

from service.localstack import LocalStack, StackError, free_port
from service.runtime.model import LoadedModel, load
from service.store import ModelStore
from service.training.demo import demo_specs, train_demo_models
from service.training.trainer import prepare

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
HELLO_APP = "loadtests.hello_app:app"
HELLO_PATH = "/predict-hello"
HELLO_TARGET = "hello (ceiling)"
# Step 5: the model-service stack again, with the Prometheus metrics and the JSON request
# log turned off (the shared monitoring state, feedback and drift, stays as it is).
MONITORING_OFF_ENV = {"MODEL_SERVICE_METRICS": "false", "MODEL_SERVICE_REQUEST_LOG": "false"}
BATCH_ROWS = 1_000
SEED = 0
JSON_HEADERS = {"Content-Type": "application/json"}
REQUEST_TIMEOUT_S = 30.0
STACK_READY_TIMEOUT_S = 120.0
WARM_UP_REQUESTS = 20
# Timed repetitions of the 1,000-row request and of each in-process call:
# at least MIN_REPEATS, then more until the time budget or MAX_REPEATS runs out.
MIN_REPEATS = 3
MAX_REPEATS = 50
# The built-in generator's hard stop, whatever the duration.
MAX_REQUESTS_PER_CONNECTION = 1_000_000
MAX_DURATION_S = 120
MAX_CONNECTIONS = 256
MAX_WORKERS = 16
WRK_RESULT_MARKER = "BENCH_RESULT "

# Runs inside wrk: POST the body from $BENCH_WRK_BODY, and print the totals as one
# JSON line so they need not be scraped from wrk's human-readable report.
WRK_SCRIPT = """\
local body_file = assert(io.open(os.getenv("BENCH_WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
-- One "Name: value" per line: the request headers (Content-Type among them).
for line in io.lines(os.getenv("BENCH_WRK_HEADERS")) do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%s{\\"requests\\": %d, \\"duration_us\\": %.0f, \\"status_errors\\": %d, "
      .. "\\"socket_errors\\": %d, \\"p50_us\\": %.1f, \\"p99_us\\": %.1f}\\n",
    "MARKER", summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""".replace("MARKER", WRK_RESULT_MARKER)


class BenchError(Exception):
    pass


# --- settings ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    duration_s: int
    connections: int
    wrk_threads: int
    workers: int
    repeat_budget_s: float
    load_generator: str
    json_path: Path | None

    @property
    def threads_per_worker(self) -> int:
        # The same share of the cores deploy/gunicorn.conf.py gives each worker.
        return max(1, (os.cpu_count() or 1) // self.workers)


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low}..{high}, got {text}")
        return value

    return parse


def parse_settings(argv: list[str] | None = None) -> BenchSettings:
    parser = argparse.ArgumentParser(
        description="Benchmark the demo models behind Nginx + Gunicorn against a hello-world "
        "Flask app under the same settings, on 127.0.0.1.",
    )
    parser.add_argument(
        "--duration",
        type=bounded_int(1, MAX_DURATION_S),
        help="Seconds of load per target (default 10; 1 with --quick).",
    )
    parser.add_argument(
        "--connections",
        type=bounded_int(1, MAX_CONNECTIONS),
        default=16,
        help="Concurrent keep-alive connections (default 16).",
    )
    parser.add_argument(
        "--threads",
        type=bounded_int(1, 64),
        default=2,
        help="wrk threads (default 2; never more than --connections).",
    )
    parser.add_argument(
        "--workers",
        type=bounded_int(1, MAX_WORKERS),
        default=2,
        help="Gunicorn workers for both stacks (default 2).",
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "builtin"),
        default="auto",
        help="auto: wrk when it is on PATH, else the built-in generator.",
    )
    parser.add_argument("--json", type=Path, help="Also write the results as JSON to this file.")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Very short measurements (1 s of load per target, few repetitions): "
        "checks the bench runs, not how fast anything is.",
    )
    args = parser.parse_args(argv)
    duration = args.duration or (1 if args.quick else 10)
    return BenchSettings(
        duration_s=duration,
        connections=args.connections,
        wrk_threads=min(args.threads, args.connections),
        workers=args.workers,
        repeat_budget_s=0.5 if args.quick else min(5.0, max(1.0, duration / 2)),
        load_generator=args.load_generator,
        json_path=args.json,
    )


# --- load generators -----------------------------------------------------------


@dataclasses.dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds > 0 else 0.0


def check_loopback(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.hostname != LOOPBACK or parts.port is None:
        raise BenchError(f"the bench only loads {LOOPBACK}, not {url}")
    return parts.hostname, parts.port, parts.path or "/"


class WrkLoad:
    name = "wrk"

    def __init__(self, binary: str, workdir: Path, settings: BenchSettings):
        self.binary = binary
        self.settings = settings
        self.workdir = workdir
        self.script = workdir / "post.lua"
        self.script.write_text(WRK_SCRIPT)
        self.version = _wrk_version(binary)

    def describe(self) -> str:
        s = self.settings
        return (
            f"{self.version} ({s.connections} connections, {s.wrk_threads} threads, "
            f"{s.duration_s} s per target)"
        )

    def run(self, url: str, body: bytes, headers: dict[str, str] | None = None) -> LoadResult:
        check_loopback(url)
        body_file = self.workdir / "body.bin"
        body_file.write_bytes(body)
        headers_file = self.workdir / "headers.txt"
        headers_file.write_text(
            "".join(f"{name}: {value}\n" for name, value in (headers or JSON_HEADERS).items())
        )
        s = self.settings
        command = [
            self.binary,
            "--threads",
            str(s.wrk_threads),
            "--connections",
            str(s.connections),
            "--duration",
            f"{s.duration_s}s",
            "--timeout",
            f"{int(REQUEST_TIMEOUT_S)}s",
            "--latency",
            "--script",
            str(self.script),
            url,
        ]
        env = {
            **os.environ,
            "BENCH_WRK_BODY": str(body_file),
            "BENCH_WRK_HEADERS": str(headers_file),
        }
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=s.duration_s + REQUEST_TIMEOUT_S + 30,
            check=False,
        )
        line = next(
            (ln for ln in done.stdout.splitlines() if ln.startswith(WRK_RESULT_MARKER)), None
        )
        if done.returncode != 0 or line is None:
            raise BenchError(f"wrk failed (exit {done.returncode}): {done.stderr or done.stdout}")
        totals = json.loads(line[len(WRK_RESULT_MARKER) :])
        return LoadResult(
            requests=totals["requests"],
            errors=totals["status_errors"] + totals["socket_errors"],
            seconds=totals["duration_us"] / 1e6,
            p50_ms=totals["p50_us"] / 1000,
            p99_ms=totals["p99_us"] / 1000,
        )


def _wrk_version(binary: str) -> str:
    # `wrk --version` prints "wrk <version> [epoll] Copyright ..." and exits 1.
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    words = (done.stdout or done.stderr).split()
    return " ".join(words[:2]) if len(words) >= 2 else "wrk"


class BuiltinLoad:
    """Closed loop: each thread sends the next request as soon as the last one is answered."""

    name = "built-in"

    def __init__(self, settings: BenchSettings):
        self.settings = settings

    def describe(self) -> str:
        s = self.settings
        return (
            f"built-in generator, wrk not used ({s.connections} threads with keep-alive "
            f"http.client connections, {s.duration_s} s per target; it shares the CPUs and "
            "the GIL, so read its figures as lower bounds)"
        )

    def run(self, url: str, body: bytes, headers: dict[str, str] | None = None) -> LoadResult:
        host, port, path = check_loopback(url)
        headers = headers or JSON_HEADERS
        connections = self.settings.connections
        latencies: list[list[float]] = [[] for _ in range(connections)]
        errors = [0] * connections
        start = time.monotonic()
        deadline = start + self.settings.duration_s

        def loop(index: int) -> None:
            connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
            try:
                for _ in range(MAX_REQUESTS_PER_CONNECTION):
                    if time.monotonic() >= deadline:
                        break
                    sent = time.perf_counter()
                    try:
                        connection.request("POST", path, body=body, headers=headers)
                        response = connection.getresponse()
                        response.read()
                        ok = response.status == 200
                    except (OSError, http.client.HTTPException):
                        ok = False
                        connection.close()
                        # Don't spin on a refused connection until the deadline.
                        time.sleep(0.01)
                    latencies[index].append(time.perf_counter() - sent)
                    if not ok:
                        errors[index] += 1
            finally:
                connection.close()

        threads = [
            threading.Thread(target=loop, args=(i,), daemon=True) for i in range(connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=self.settings.duration_s + REQUEST_TIMEOUT_S + 5)
        elapsed = time.monotonic() - start
        ordered = sorted(value for per_thread in latencies for value in per_thread)
        return LoadResult(
            requests=len(ordered),
            errors=sum(errors),
            seconds=elapsed,
            p50_ms=percentile(ordered, 50) * 1000,
            p99_ms=percentile(ordered, 99) * 1000,
        )


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when it is empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def choose_load_generator(settings: BenchSettings, workdir: Path) -> WrkLoad | BuiltinLoad:
    binary = shutil.which("wrk")
    if settings.load_generator == "wrk" and binary is None:
        raise BenchError("--load-generator wrk: wrk is not on PATH (apt-get install -y wrk)")
    if settings.load_generator != "builtin" and binary is not None:
        return WrkLoad(binary, workdir, settings)
    return BuiltinLoad(settings)


# --- requests and timings ------------------------------------------------------


def post(
    connection: http.client.HTTPConnection,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    connection.request("POST", path, body=body, headers=headers or JSON_HEADERS)
    response = connection.getresponse()
    return response.status, response.read()


def expect_predictions(status: int, answer: bytes, rows: int, what: str) -> None:
    if status != 200:
        raise BenchError(f"{what}: expected 200, got {status}: {answer[:300]!r}")
    predictions = json.loads(answer).get("predictions")
    if not isinstance(predictions, list) or len(predictions) != rows:
        raise BenchError(f"{what}: expected {rows} predictions in the answer")


def warm_up(url: str, body: bytes, check: Callable[[int, bytes], None]) -> None:
    """A few untimed requests, so every worker has run the code path once before timing."""
    host, port, path = check_loopback(url)
    for _ in range(WARM_UP_REQUESTS):
        # A new connection each time lets the kernel hand requests to different workers.
        connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
        try:
            check(*post(connection, path, body))
        finally:
            connection.close()


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


def http_batch_seconds(url: str, body: bytes, rows: int, budget_s: float, what: str) -> float:
    host, port, path = check_loopback(url)
    connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
    try:
        expect_predictions(*post(connection, path, body), rows, what)

        def one_request() -> None:
            status, answer = post(connection, path, body)
            if status != 200:
                raise BenchError(f"{what}: expected 200, got {status}: {answer[:300]!r}")

        return median_seconds(one_request, budget_s)
    finally:
        connection.close()


# --- memory --------------------------------------------------------------------


def smaps_rollup_kib(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0])
    return values


def stack_memory(stack: LocalStack) -> dict[str, Any]:
    master = stack.running_pids().get("gunicorn")
    workers = stack.worker_pids()
    if master is None or not workers:
        raise BenchError(f"no Gunicorn master or workers to measure in {stack.runtime_dir}")
    master_kib = smaps_rollup_kib(master)
    worker_kib = [smaps_rollup_kib(pid) for pid in workers]
    # The largest worker stands for "one worker": the others differ only by what they touched.
    largest = max(worker_kib, key=lambda kib: kib["Pss"])
    return {
        "workers": len(workers),
        "total_pss_mib": (master_kib["Pss"] + sum(k["Pss"] for k in worker_kib)) / 1024,
        "master_pss_mib": master_kib["Pss"] / 1024,
        "worker_pss_mib": largest["Pss"] / 1024,
        "worker_rss_mib": largest["Rss"] / 1024,
    }


# --- the benchmark -------------------------------------------------------------


@dataclasses.dataclass
class DemoPayload:
    name: str
    version: int
    instances: list[dict[str, Any]]
    features: list[str]

    def body(self, rows: int) -> bytes:
        return json.dumps({"instances": self.instances[:rows]}).encode()

    def matrix(self, rows: int) -> list[list[Any]]:
        return [[instance[f] for f in self.features] for instance in self.instances[:rows]]


def demo_payloads(store: ModelStore) -> list[DemoPayload]:
    """BATCH_ROWS real rows per demo model, drawn (with replacement) from its dataset."""
    rng = np.random.default_rng(SEED)
    payloads = []
    for demo in demo_specs():
        version = store.aliases(demo.name)["production"]
        dtypes = {
            f["name"]: f["dtype"] for f in store.metadata(demo.name, version)["input"]["features"]
        }
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
        payloads.append(DemoPayload(demo.name, version, instances, names))
    return payloads


# --- protocols -------------------------------------------------------------------

# The same rows through each protocol the service speaks: single-row load for the linear
# model (where protocol overhead shows most), and one 1,000-row request per model.
PROTOCOL_MODEL = "iris-classifier"
NATIVE, V2_JSON, V2_BINARY, MLFLOW = "native", "v2 JSON", "v2 binary", "MLflow"
PROTOCOLS = (NATIVE, V2_JSON, V2_BINARY, MLFLOW)
V2_INPUT = "input-0"
V2_HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclasses.dataclass(frozen=True)
class ProtocolRequest:
    protocol: str
    path: str
    headers: dict[str, str]
    body: bytes
    rows: int


def protocol_request(protocol: str, payload: DemoPayload, rows: int) -> ProtocolRequest:
    matrix = payload.matrix(rows)
    width = len(payload.features)
    if protocol == NATIVE:
        return ProtocolRequest(
            protocol, f"/v1/models/{payload.name}/predict", JSON_HEADERS, payload.body(rows), rows
        )
    if protocol == MLFLOW:
        body = {"dataframe_split": {"columns": payload.features, "data": matrix}}
        return ProtocolRequest(
            protocol,
            f"/v1/models/{payload.name}/invocations",
            JSON_HEADERS,
            json.dumps(body).encode(),
            rows,
        )
    path = f"/v2/models/{payload.name}/infer"
    tensor = {"name": V2_INPUT, "shape": [rows, width], "datatype": "FP64"}
    if protocol == V2_JSON:
        body = {"inputs": [{**tensor, "data": [v for row in matrix for v in row]}]}
        return ProtocolRequest(protocol, path, JSON_HEADERS, json.dumps(body).encode(), rows)
    # The binary tensor data extension, as tritonclient sends it by default: a JSON header,
    # then the raw little-endian float64 values; outputs come back binary too.
    raw = np.asarray(matrix, dtype="<f8").tobytes()
    header = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }
    header_bytes = json.dumps(header).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        V2_HEADER_LENGTH: str(len(header_bytes)),
    }
    return ProtocolRequest(protocol, path, headers, header_bytes + raw, rows)


def post_request(
    connection: http.client.HTTPConnection, request: ProtocolRequest
) -> tuple[int, bytes, dict[str, str]]:
    connection.request("POST", request.path, body=request.body, headers=request.headers)
    response = connection.getresponse()
    return response.status, response.read(), dict(response.getheaders())


def check_protocol_answer(
    request: ProtocolRequest, status: int, answer: bytes, headers: dict[str, str]
) -> None:
    what = f"{request.protocol} {request.path}"
    if status != 200:
        raise BenchError(f"{what}: expected 200, got {status}: {answer[:300]!r}")
    if request.protocol in (V2_JSON, V2_BINARY):
        length = int(headers.get(V2_HEADER_LENGTH) or len(answer))
        if request.protocol == V2_BINARY and V2_HEADER_LENGTH not in headers:
            raise BenchError(f"{what}: the answer is not in the binary tensor format")
        outputs = json.loads(answer[:length])["outputs"]
        answered = next(o["shape"][0] for o in outputs if o["name"] == "predict")
    else:
        answered = len(json.loads(answer)["predictions"])
    if answered != request.rows:
        raise BenchError(f"{what}: expected {request.rows} predictions, got {answered}")


def protocol_batch_seconds(url: str, request: ProtocolRequest, budget_s: float) -> float:
    host, port, _ = check_loopback(url)
    connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
    try:
        check_protocol_answer(request, *post_request(connection, request))

        def one_request() -> None:
            status, answer, _ = post_request(connection, request)
            if status != 200:
                raise BenchError(
                    f"{request.protocol}: expected 200, got {status}: {answer[:300]!r}"
                )

        return median_seconds(one_request, budget_s)
    finally:
        connection.close()


def measure_protocols(
    stack: LocalStack,
    payloads: list[DemoPayload],
    load_generator: WrkLoad | BuiltinLoad,
    settings: BenchSettings,
) -> tuple[dict[str, LoadResult], dict[str, dict[str, float]]]:
    single: dict[str, LoadResult] = {}
    linear = next(p for p in payloads if p.name == PROTOCOL_MODEL)
    for protocol in PROTOCOLS:
        request = protocol_request(protocol, linear, 1)
        host, port, _ = check_loopback(stack.url)
        for _ in range(WARM_UP_REQUESTS):
            connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
            try:
                check_protocol_answer(request, *post_request(connection, request))
            finally:
                connection.close()
        progress(f"single-row load, {protocol}: {linear.name}")
        single[protocol] = load_generator.run(
            stack.url + request.path, request.body, request.headers
        )
    batch: dict[str, dict[str, float]] = {}
    for payload in payloads:
        for protocol in PROTOCOLS:
            progress(f"{BATCH_ROWS}-row requests, {protocol}: {payload.name}")
            request = protocol_request(protocol, payload, BATCH_ROWS)
            seconds = protocol_batch_seconds(stack.url, request, settings.repeat_budget_s)
            batch.setdefault(payload.name, {})[protocol] = BATCH_ROWS / seconds
    return single, batch


def measure_in_process(
    store: ModelStore, payloads: list[DemoPayload], settings: BenchSettings
) -> dict[str, dict[str, float]]:
    rows_per_s: dict[str, dict[str, float]] = {}
    # One process predicting with the native threads one Gunicorn worker gets.
    with threadpool_limits(limits=settings.threads_per_worker):
        for payload in payloads:
            progress(f"in-process: {payload.name}")
            model: LoadedModel = load(store, payload.name, payload.version)
            model_input = model.prepare(payload.instances)
            loaded_s = median_seconds(
                lambda m=model, p=payload: m.predict(p.instances), settings.repeat_budget_s
            )
            raw_s = median_seconds(
                lambda m=model, x=model_input: m.estimator.predict(x), settings.repeat_budget_s
            )
            rows_per_s[payload.name] = {
                "loaded_model_rows_per_s": BATCH_ROWS / loaded_s,
                "estimator_rows_per_s": BATCH_ROWS / raw_s,
            }
    return rows_per_s


def start_stack(
    name: str, workdir: Path, store: Path, settings: BenchSettings, **extra
) -> LocalStack:
    stack = LocalStack(
        runtime_dir=workdir / name,
        store=store,
        host=LOOPBACK,
        port=free_port(),
        workers=settings.workers,
        **extra,
    )
    progress(f"starting {name} stack on {stack.url}")
    stack.start(ready_timeout=STACK_READY_TIMEOUT_S)
    return stack


def predict_url(stack: LocalStack, payload: DemoPayload) -> str:
    return f"{stack.url}/v1/models/{payload.name}/predict"


def warm_up_model(stack: LocalStack, payload: DemoPayload) -> None:
    warm_up(
        predict_url(stack, payload),
        payload.body(1),
        lambda status, answer: expect_predictions(status, answer, 1, payload.name),
    )


def measure_model_stack(
    store: Path,
    payloads: list[DemoPayload],
    load_generator: WrkLoad | BuiltinLoad,
    settings: BenchSettings,
    workdir: Path,
) -> tuple[
    dict[str, LoadResult],
    dict[str, float],
    dict[str, Any],
    bool,
    tuple[dict[str, LoadResult], dict[str, dict[str, float]]],
]:
    stack = start_stack("model-service", workdir, store, settings)
    try:
        single: dict[str, LoadResult] = {}
        batch_rows_per_s: dict[str, float] = {}
        for payload in payloads:
            url = predict_url(stack, payload)
            warm_up_model(stack, payload)
            progress(f"single-row load: {payload.name}")
            single[payload.name] = load_generator.run(url, payload.body(1))
            progress(f"{BATCH_ROWS}-row requests: {payload.name}")
            seconds = http_batch_seconds(
                url, payload.body(BATCH_ROWS), BATCH_ROWS, settings.repeat_budget_s, payload.name
            )
            batch_rows_per_s[payload.name] = BATCH_ROWS / seconds
        protocols = measure_protocols(stack, payloads, load_generator, settings)
        # A worker recycled by max_requests during the load has touched little yet:
        # let the workers serve every model again before their memory is read.
        for payload in payloads:
            warm_up_model(stack, payload)
        memory = stack_memory(stack)
        behind_nginx = bool(stack.use_nginx)
    finally:
        stack.stop()
    return single, batch_rows_per_s, memory, behind_nginx, protocols


def measure_monitoring_off(
    store: Path,
    payloads: list[DemoPayload],
    load_generator: WrkLoad | BuiltinLoad,
    settings: BenchSettings,
    workdir: Path,
) -> dict[str, LoadResult]:
    """The single-row load of measure_model_stack, with metrics and the request log off."""
    stack = start_stack(
        "model-service-monitoring-off", workdir, store, settings, extra_env=MONITORING_OFF_ENV
    )
    try:
        single: dict[str, LoadResult] = {}
        for payload in payloads:
            warm_up_model(stack, payload)
            progress(f"single-row load, monitoring off: {payload.name}")
            single[payload.name] = load_generator.run(predict_url(stack, payload), payload.body(1))
    finally:
        stack.stop()
    return single


def measure_hello_stack(
    store: Path,
    body: bytes,
    load_generator: WrkLoad | BuiltinLoad,
    settings: BenchSettings,
    workdir: Path,
) -> tuple[LoadResult, dict[str, Any]]:
    # Gunicorn imports the app by module path, so the repository root must be importable
    # from wherever the bench was started.
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    stack = start_stack(
        "hello", workdir, store, settings, app=HELLO_APP, extra_env={"PYTHONPATH": python_path}
    )
    try:
        url = stack.url + HELLO_PATH

        def expect_ok(status: int, answer: bytes) -> None:
            if status != 200:
                raise BenchError(f"hello: expected 200, got {status}: {answer[:300]!r}")

        warm_up(url, body, expect_ok)
        progress("single-row load: hello")
        result = load_generator.run(url, body)
        warm_up(url, body, expect_ok)  # as for the models: no fresh, untouched worker
        memory = stack_memory(stack)
    finally:
        stack.stop()
    return result, memory


def run(settings: BenchSettings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="model-service-bench-") as tmp:
        workdir = Path(tmp)
        store_dir = workdir / "model_store"
        progress(f"training the demo models into {store_dir}")
        store = ModelStore(store_dir)
        train_demo_models(store, progress=False)
        payloads = demo_payloads(store)
        load_generator = choose_load_generator(settings, workdir)

        # First, while no stack is running, so nothing else competes for the CPUs.
        in_process = measure_in_process(store, payloads, settings)
        single, batch_http, model_memory, behind_nginx, protocols = measure_model_stack(
            store_dir, payloads, load_generator, settings, workdir
        )
        monitoring_off = measure_monitoring_off(
            store_dir, payloads, load_generator, settings, workdir
        )
        # The ceiling gets the largest single-row body, so it parses at least as much JSON
        # as any model's request.
        hello_body = max((p.body(1) for p in payloads), key=len)
        hello, hello_memory = measure_hello_stack(
            store_dir, hello_body, load_generator, settings, workdir
        )

    def figures(result: LoadResult) -> dict[str, Any]:
        return {
            "requests": result.requests,
            "errors": result.errors,
            "seconds": round(result.seconds, 3),
            "requests_per_s": result.requests_per_s,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
        }

    single_rows = [{"target": HELLO_TARGET, **figures(hello)}]
    for name, result in single.items():
        single_rows.append(
            {
                "target": name,
                **figures(result),
                "requests_per_s_ratio": _ratio(result.requests_per_s, hello.requests_per_s),
                "p50_ratio": _ratio(result.p50_ms, hello.p50_ms),
                "p99_ratio": _ratio(result.p99_ms, hello.p99_ms),
            }
        )
    batch_rows = [
        {
            "model": payload.name,
            "rows": BATCH_ROWS,
            "http_rows_per_s": batch_http[payload.name],
            **in_process[payload.name],
        }
        for payload in payloads
    ]
    protocol_single, protocol_batch = protocols
    native = protocol_single[NATIVE]
    protocol_rows = [
        {
            "protocol": protocol,
            "model": PROTOCOL_MODEL,
            **figures(result),
            "requests_per_s_ratio_to_native": _ratio(result.requests_per_s, native.requests_per_s),
            "requests_per_s_ratio_to_hello": _ratio(result.requests_per_s, hello.requests_per_s),
        }
        for protocol, result in protocol_single.items()
    ]
    protocol_batch_rows = [
        {"model": name, "rows": BATCH_ROWS, "rows_per_s": by_protocol}
        for name, by_protocol in protocol_batch.items()
    ]
    monitoring_rows = [
        {
            "model": name,
            "requests_per_s_on": single[name].requests_per_s,
            "requests_per_s_off": off.requests_per_s,
            "requests_per_s_ratio": _ratio(single[name].requests_per_s, off.requests_per_s),
            "p50_ms_on": single[name].p50_ms,
            "p50_ms_off": off.p50_ms,
            "p99_ms_on": single[name].p99_ms,
            "p99_ms_off": off.p99_ms,
            "errors_off": off.errors,
        }
        for name, off in monitoring_off.items()
    ]
    return {
        "load_generator": {"tool": load_generator.name, "description": load_generator.describe()},
        "settings": {
            "duration_s": settings.duration_s,
            "connections": settings.connections,
            "workers": settings.workers,
            "cpus": os.cpu_count(),
            "front": "nginx" if behind_nginx else "gunicorn (nginx not installed)",
            "threads_per_worker": settings.threads_per_worker,
        },
        "single_row": single_rows,
        "batch": batch_rows,
        "protocols_single_row": protocol_rows,
        "protocols_batch": protocol_batch_rows,
        "memory": [
            {"stack": "model-service", **model_memory},
            {"stack": "hello", **hello_memory},
        ],
        "monitoring_cost": monitoring_rows,
    }


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference else 0.0


# --- output --------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    front = "Nginx -> Gunicorn" if s["front"] == "nginx" else "Gunicorn (no Nginx installed)"
    lines = [
        f"model-service bench: {front}, {s['workers']} sync workers, {s['cpus']} CPUs, "
        f"{s['threads_per_worker']} native thread(s) per worker",
        f"load generator: {results['load_generator']['description']}",
        "",
        "Single-row predictions (POST, one instance)",
        f"{'target':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'req/s ÷ hello':>15}{'p50 ÷ hello':>13}{'p99 ÷ hello':>13}",
    ]
    for row in results["single_row"]:
        ratios = (
            f"{row['requests_per_s_ratio']:>15.2f}{row['p50_ratio']:>13.2f}{row['p99_ratio']:>13.2f}"
            if "requests_per_s_ratio" in row
            else f"{'1.00':>15}{'1.00':>13}{'1.00':>13}"
        )
        lines.append(
            f"{row['target']:<26}{row['requests_per_s']:>10.1f}{row['p50_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}{row['errors']:>8d}{ratios}"
        )
    lines += [
        "",
        f"One {BATCH_ROWS:,}-row request, rows/s (median of repeated calls)",
        f"{'model':<26}{'HTTP via ' + ('Nginx' if s['front'] == 'nginx' else 'Gunicorn'):>16}"
        f"{'LoadedModel.predict':>21}{'estimator.predict':>19}{'HTTP ÷ LoadedModel':>20}",
    ]
    for row in results["batch"]:
        lines.append(
            f"{row['model']:<26}{row['http_rows_per_s']:>16,.0f}"
            f"{row['loaded_model_rows_per_s']:>21,.0f}{row['estimator_rows_per_s']:>19,.0f}"
            f"{_ratio(row['http_rows_per_s'], row['loaded_model_rows_per_s']):>20.2f}"
        )
    lines += [
        "(LoadedModel.predict validates the rows and, for classifiers, adds probabilities as the",
        " API does; estimator.predict gets the already prepared matrix)",
    ]
    lines += [
        "",
        f"Protocols: single-row predictions of {PROTOCOL_MODEL}, the same row each way",
        f"{'protocol':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'÷ native':>10}{'÷ hello':>10}",
    ]
    for row in results["protocols_single_row"]:
        lines.append(
            f"{row['protocol']:<26}{row['requests_per_s']:>10.1f}{row['p50_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}{row['errors']:>8d}"
            f"{row['requests_per_s_ratio_to_native']:>10.2f}"
            f"{row['requests_per_s_ratio_to_hello']:>10.2f}"
        )
    lines += [
        "",
        f"Protocols: one {BATCH_ROWS:,}-row request, rows/s (median of repeated calls)",
        f"{'model':<26}" + "".join(f"{p:>13}" for p in PROTOCOLS),
    ]
    for row in results["protocols_batch"]:
        lines.append(
            f"{row['model']:<26}" + "".join(f"{row['rows_per_s'][p]:>13,.0f}" for p in PROTOCOLS)
        )
    lines += [
        "",
        "Memory after the load (PSS from /proc/PID/smaps_rollup, MiB)",
        f"{'stack':<26}{'processes':>10}{'total PSS':>11}{'master PSS':>12}"
        f"{'one worker PSS':>16}{'one worker RSS':>16}",
    ]
    for row in results["memory"]:
        lines.append(
            f"{row['stack']:<26}{'1+' + str(row['workers']):>10}{row['total_pss_mib']:>11.1f}"
            f"{row['master_pss_mib']:>12.1f}{row['worker_pss_mib']:>16.1f}"
            f"{row['worker_rss_mib']:>16.1f}"
        )
    lines += [
        "",
        "Monitoring cost: single-row predictions, Prometheus metrics and request log on vs off",
        f"{'model':<26}{'req/s on':>10}{'req/s off':>11}{'on ÷ off':>10}"
        f"{'p50 ms on':>11}{'p50 ms off':>12}{'errors off':>12}",
    ]
    for row in results["monitoring_cost"]:
        lines.append(
            f"{row['model']:<26}{row['requests_per_s_on']:>10.1f}{row['requests_per_s_off']:>11.1f}"
            f"{row['requests_per_s_ratio']:>10.2f}{row['p50_ms_on']:>11.2f}"
            f"{row['p50_ms_off']:>12.2f}{row['errors_off']:>12d}"
        )
    errors = sum(
        row["errors"] for row in results["single_row"] + results["protocols_single_row"]
    ) + sum(row["errors_off"] for row in results["monitoring_cost"])
    if errors:
        lines += ["", f"WARNING: {errors} requests failed under load; the figures are suspect."]
    return "\n".join(lines)


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _exit_on_sigterm(signum, _frame) -> None:
    # Turn SIGTERM into an exception so the finally blocks stop the stacks.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        results = run(settings)
    except (BenchError, StackError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    print(render(results))
    if settings.json_path is not None:
        settings.json_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {settings.json_path}")
    rows = results["single_row"] + results["protocols_single_row"]
    failed = any(row["errors"] for row in rows)
    return 1 if failed or any(row["errors_off"] for row in results["monitoring_cost"]) else 0


if __name__ == "__main__":
    sys.exit(main())
