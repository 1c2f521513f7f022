"""`make bench`: the performance goals of model-service, as ratios measured in one run.

Every stack runs on 127.0.0.1 behind the same Nginx and Gunicorn settings (worker
count, worker class and threads from the command line), one after the other so they
never compete for the CPUs, and is stopped by pid. One table comes out, in sections,
and the same rows as JSON with ``--json``:

Goals (each a ratio of two figures measured in this run, with its target):
  P1  single-row predictions of iris-classifier (LogisticRegression), req/s ÷ the
      hello-world endpoint (loadtests/hello_app.py): ≥ 0.85, monitoring on (defaults)
  P2  the same for breast-cancer-classifier (100-tree random forest): ≥ 0.70
  P3  1,000-row requests, rows/s ÷ the naive handler's on the same rows, per demo
      model: ≥ 3 with the native JSON API, ≥ 10 with the Open Inference Protocol v2
      binary tensor extension
  P4  total PSS (Gunicorn master + workers, /proc/PID/smaps_rollup) of the stack with
      4 workers ÷ the same stack with 1 worker, after the same warm-up traffic: ≤ 1.3
  P5  iris-classifier paced at 80 % of its P1 rate: p99 ÷ p50 ≤ 3 (achieved rate shown)
  M   monitoring (Prometheus metrics + request log) on ÷ off, req/s: ≥ 0.90

Details, each next to the naive handler (loadtests/naive_app.py) where it has one:
single-row loads (hello, naive, the service per model, per protocol, with monitoring
off, with the pickle backend forced when the answers name a backend), P5's paced load
for naive and service, 1,000-row requests per protocol, in-process per-call timings,
memory, and MLflow's own scoring server when `make bench-peers` has installed it.

Single-row figures come from wrk (a Lua script POSTs the body; P5 adds a per-thread
pacing ``delay()``), or from a built-in generator when wrk is not installed. 1,000-row
figures come from the same closed loop (every worker busy), over 3 s loads. With
``--rounds N`` every stack runs N times and each figure is the median.

    .venv/bin/python loadtests/bench.py [--duration 10] [--rounds 1] [--workers 2]
        [--worker-class sync|gthread] [--threads 4] [--json PATH] [--quick] [--no-peers]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
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
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from threadpoolctl import threadpool_limits

from service.localstack import LocalStack, StackError, free_port
from service.runtime.model import LoadedModel, load
from service.store import ModelStore
from service.store.metadata import onnx_backend
from service.training.demo import demo_specs, train_demo_models
from service.training.split import prepare

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
HELLO_APP = "loadtests.hello_app:app"
HELLO_PATH = "/predict-hello"
PARSE_HELLO_PATH = "/parse-hello"
READ_HELLO_PATH = "/read-hello"
NAIVE_APP = "loadtests.naive_app:app"
NAIVE_PATH = "/predict"
NAIVE_MODEL_ENV = "BENCH_NAIVE_MODEL"
NAIVE_ONNX_APP = "loadtests.naive_onnx_app:app"
NAIVE_ONNX_ENV = "BENCH_NAIVE_ONNX"
PEERS_VENV = REPO_ROOT / ".bench-peers"
PEERS_HINT = "not installed (make bench-peers)"

IRIS = "iris-classifier"
FOREST = "breast-cancer-classifier"
REGRESSOR = "diabetes-regressor"
# Single-row loads of the naive handler and of the service with the pickle backend forced.
SINGLE_ROW_REFERENCE_MODELS = (IRIS, FOREST)
# The service again with metrics and the request log off (feedback and drift stay on).
MONITORING_OFF_MODELS = (IRIS, REGRESSOR)
MONITORING_OFF_ENV = {"MODEL_SERVICE_METRICS": "false", "MODEL_SERVICE_REQUEST_LOG": "false"}
# Answers name the backend that computed them once the compiled one is there; this
# setting forces the unpickled estimator.
BACKEND_ENV = "MODEL_SERVICE_BACKEND"
SKLEARN_BACKEND = "sklearn"
NO_BACKEND = "-"
PACED_FRACTION = 0.8
# A paced load that falls behind its schedule (every connection busy) sends at once, and
# catches up on at most this much of the missed schedule, so a stall gives a short burst.
PACING_MAX_LAG_S = 0.1
MEMORY_WORKERS = (1, 4)
# The warm-up before P4's memory is read, the same on both stacks: for every demo model,
# single-row and 1,000-row requests, this many of each over this many connections.
MEMORY_WARM_UP_REQUESTS = 32
MEMORY_WARM_UP_CONNECTIONS = 8

GOALS = {
    "P1": (">=", 0.85),
    "P2": (">=", 0.70),
    "P3 native": (">=", 3.0),
    "P3 v2 binary": (">=", 10.0),
    "P4": ("<=", 1.3),
    "P5": ("<=", 3.0),
    "M": (">=", 0.90),
}

BATCH_ROWS = 1_000
SEED = 0
JSON_HEADERS = {"Content-Type": "application/json"}
REQUEST_TIMEOUT_S = 30.0
STACK_READY_TIMEOUT_S = 120.0
PEER_READY_TIMEOUT_S = 120.0
PEER_BUILD_TIMEOUT_S = 300.0
WARM_UP_REQUESTS = 20
# Timed repetitions of a 1,000-row request and of each in-process call:
# at least MIN_REPEATS, then more until the time budget or MAX_REPEATS runs out.
MIN_REPEATS = 3
MAX_REPEATS = 50
# The built-in generator's hard stop, whatever the duration.
MAX_REQUESTS_PER_CONNECTION = 1_000_000
MAX_DURATION_S = 120
MAX_CONNECTIONS = 256
MAX_WORKERS = 16
MAX_ROUNDS = 9
WRK_RESULT_MARKER = "WRK_RESULT "

# The end of every wrk script of the load tests (this one's and loadtests/soak.py's). With
# $WRK_INTERVAL_MS set, each wrk thread paces its connections: delay() hands out send
# times one interval apart (a slot missed while every connection was busy is dropped, not
# made up in a burst; at most $WRK_MAX_LAG_MS is caught up on), so the threads together
# aim at a fixed rate. done() prints the totals as one JSON line so they need not be
# scraped from wrk's human-readable report.
WRK_PACING_AND_TOTALS = """\
local interval_ms = tonumber(os.getenv("WRK_INTERVAL_MS") or "")
if interval_ms then
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } wrk_timespec;
    int clock_gettime(int clock_id, wrk_timespec *tp);
  ]]
  local CLOCK_MONOTONIC = 1
  local now = ffi.new("wrk_timespec")
  local function now_ms()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, now)
    return tonumber(now.tv_sec) * 1000 + tonumber(now.tv_nsec) / 1e6
  end
  local max_lag_ms = tonumber(os.getenv("WRK_MAX_LAG_MS"))
  local next_ms = nil
  delay = function()
    local t = now_ms()
    if next_ms == nil then
      next_ms = t
    elseif next_ms < t - max_lag_ms then
      next_ms = t - max_lag_ms
    end
    local wait = next_ms - t
    next_ms = next_ms + interval_ms
    if wait < 0 then return 0 end
    return wait
  end
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

# Runs inside wrk: POST the body from $BENCH_WRK_BODY with the headers from
# $BENCH_WRK_HEADERS.
WRK_SCRIPT = (
    """\
local body_file = assert(io.open(os.getenv("BENCH_WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
-- One "Name: value" per line: the request headers (Content-Type among them).
for line in io.lines(os.getenv("BENCH_WRK_HEADERS")) do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

"""
    + WRK_PACING_AND_TOTALS
)


class BenchError(Exception):
    pass


# --- settings ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    duration_s: int
    connections: int
    wrk_threads: int
    workers: int
    worker_class: str
    threads: int
    rounds: int
    repeat_budget_s: float
    load_generator: str
    json_path: Path | None
    peers_venv: Path | None

    @property
    def threads_per_worker(self) -> int:
        # The same share of the cores deploy/gunicorn.conf.py gives each worker.
        return max(1, (os.cpu_count() or 1) // self.workers)

    @property
    def worker_env(self) -> dict[str, str]:
        """What deploy/gunicorn.conf.py reads for the worker class and its threads."""
        return {
            "MODEL_SERVICE_WORKER_CLASS": self.worker_class,
            "MODEL_SERVICE_THREADS": str(self.threads),
        }

    def describe_workers(self, workers: int | None = None) -> str:
        workers = self.workers if workers is None else workers
        threads = f" × {self.threads} threads" if self.worker_class == "gthread" else ""
        return f"{workers} {self.worker_class} worker{'s' if workers != 1 else ''}{threads}"


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low}..{high}, got {text}")
        return value

    return parse


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """The options the bench shares with loadtests/worker_models.py."""
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
        "--wrk-threads",
        type=bounded_int(1, 64),
        default=2,
        help="wrk threads (default 2; never more than --connections).",
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


def parse_settings(argv: list[str] | None = None) -> BenchSettings:
    parser = argparse.ArgumentParser(
        description="The performance goals of model-service, measured side by side with a "
        "hello-world endpoint and a naive handler behind the same Nginx and Gunicorn, on "
        "127.0.0.1.",
    )
    add_stack_arguments(parser)
    parser.add_argument(
        "--workers",
        type=bounded_int(1, MAX_WORKERS),
        default=2,
        help="Gunicorn workers of every stack but P4's (default 2).",
    )
    parser.add_argument(
        "--worker-class",
        choices=("sync", "gthread"),
        default="sync",
        help="Gunicorn worker class of every stack (default sync).",
    )
    parser.add_argument(
        "--threads",
        type=bounded_int(1, 64),
        help="Threads per gthread worker (default 4; sync workers have one).",
    )
    parser.add_argument(
        "--rounds",
        type=bounded_int(1, MAX_ROUNDS),
        default=1,
        help="Run every measurement this many times, stack after stack, and report the "
        "median of each figure (default 1).",
    )
    parser.add_argument(
        "--peers-venv",
        type=Path,
        default=PEERS_VENV,
        help="The virtualenv `make bench-peers` made (default .bench-peers/); MLflow rows "
        "are measured only when it exists.",
    )
    parser.add_argument("--no-peers", action="store_true", help="Leave out the MLflow rows.")
    args = parser.parse_args(argv)
    duration = args.duration or (1 if args.quick else 10)
    if args.worker_class == "sync" and (args.threads or 1) != 1:
        parser.error("--threads: sync workers have one thread; add --worker-class gthread")
    threads = args.threads or (4 if args.worker_class == "gthread" else 1)
    return BenchSettings(
        duration_s=duration,
        connections=args.connections,
        wrk_threads=min(args.wrk_threads, args.connections),
        workers=args.workers,
        worker_class=args.worker_class,
        threads=threads,
        rounds=args.rounds,
        repeat_budget_s=0.5 if args.quick else min(5.0, max(1.0, duration / 2)),
        load_generator=args.load_generator,
        json_path=args.json,
        peers_venv=None if args.no_peers else args.peers_venv,
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

    def __init__(self, binary: str, workdir: Path, duration_s: int, connections: int, threads: int):
        self.binary = binary
        self.duration_s = duration_s
        self.connections = connections
        self.threads = threads
        self.workdir = workdir
        self.script = workdir / "post.lua"
        self.script.write_text(WRK_SCRIPT)
        self.version = _wrk_version(binary)

    def describe(self) -> str:
        return (
            f"{self.version}, {self.connections} connections, {self.threads} threads, "
            f"{self.duration_s} s per load"
        )

    def run(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        rate: float | None = None,
        duration_s: float | None = None,
    ) -> LoadResult:
        """Closed loop at full speed; with ``rate`` (req/s, all connections together),
        each wrk thread sends at most rate / threads requests a second."""
        check_loopback(url)
        duration = math.ceil(duration_s or self.duration_s)
        body_file = self.workdir / "body.bin"
        body_file.write_bytes(body)
        headers_file = self.workdir / "headers.txt"
        headers_file.write_text(
            "".join(f"{name}: {value}\n" for name, value in (headers or JSON_HEADERS).items())
        )
        totals = run_wrk(
            self.binary,
            self.script,
            url,
            self.threads,
            self.connections,
            duration,
            {"BENCH_WRK_BODY": str(body_file), "BENCH_WRK_HEADERS": str(headers_file)},
            rate,
        )
        return LoadResult(
            requests=totals["requests"],
            errors=totals["status_errors"] + totals["socket_errors"],
            seconds=totals["duration_us"] / 1e6,
            p50_ms=totals["p50_us"] / 1000,
            p99_ms=totals["p99_us"] / 1000,
        )


def run_wrk(
    binary: str,
    script: Path,
    url: str,
    threads: int,
    connections: int,
    duration_s: int,
    script_env: dict[str, str],
    rate: float | None = None,
) -> dict[str, float]:
    """One wrk run of a script that ends with WRK_PACING_AND_TOTALS: a closed loop, or with
    ``rate`` (req/s, all threads together) a paced load. The totals its done() printed."""
    env = {**os.environ, **script_env}
    env.pop("WRK_INTERVAL_MS", None)
    if rate is not None:
        env["WRK_INTERVAL_MS"] = f"{1000.0 * threads / rate:.6f}"
        env["WRK_MAX_LAG_MS"] = f"{1000.0 * PACING_MAX_LAG_S:.0f}"
    command = [
        binary,
        "--threads",
        str(threads),
        "--connections",
        str(connections),
        "--duration",
        f"{duration_s}s",
        "--timeout",
        f"{int(REQUEST_TIMEOUT_S)}s",
        "--latency",
        "--script",
        str(script),
        url,
    ]
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=duration_s + REQUEST_TIMEOUT_S + 30,
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(WRK_RESULT_MARKER)), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {done.returncode}): {done.stderr or done.stdout}")
    return json.loads(line[len(WRK_RESULT_MARKER) :])


def _wrk_version(binary: str) -> str:
    # `wrk --version` prints "wrk <version> [epoll] Copyright ..." and exits 1.
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    words = (done.stdout or done.stderr).split()
    return " ".join(words[:2]) if len(words) >= 2 else "wrk"


class BuiltinLoad:
    """Closed loop: each thread sends the next request as soon as the last one is answered
    (with ``rate``, no sooner than its next send time)."""

    name = "built-in"

    def __init__(self, duration_s: int, connections: int):
        self.duration_s = duration_s
        self.connections = connections

    def describe(self) -> str:
        return (
            f"built-in generator, wrk not used ({self.connections} threads with keep-alive "
            f"http.client connections, {self.duration_s} s per load; it shares the CPUs and "
            "the GIL, so read its figures as lower bounds)"
        )

    def run(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        rate: float | None = None,
        duration_s: float | None = None,
    ) -> LoadResult:
        host, port, path = check_loopback(url)
        duration = duration_s or self.duration_s
        headers = headers or JSON_HEADERS
        connections = self.connections
        interval_s = connections / rate if rate else 0.0
        latencies: list[list[float]] = [[] for _ in range(connections)]
        errors = [0] * connections
        start = time.monotonic()
        deadline = start + duration

        def loop(index: int) -> None:
            connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
            # Paced threads start spread over one interval, not all at once.
            next_send = start + interval_s * index / connections
            try:
                for _ in range(MAX_REQUESTS_PER_CONNECTION):
                    if interval_s:
                        now = time.monotonic()
                        next_send = max(next_send, now - PACING_MAX_LAG_S)
                        if next_send >= deadline:
                            break
                        time.sleep(max(0.0, next_send - now))
                        next_send += interval_s
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
            thread.join(timeout=duration + REQUEST_TIMEOUT_S + 5)
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


LoadGenerator = WrkLoad | BuiltinLoad


def choose_load_generator(
    choice: str, workdir: Path, duration_s: int, connections: int, wrk_threads: int
) -> LoadGenerator:
    binary = shutil.which("wrk")
    if choice == "wrk" and binary is None:
        raise BenchError("--load-generator wrk: wrk is not on PATH (apt-get install -y wrk)")
    if choice != "builtin" and binary is not None:
        return WrkLoad(binary, workdir, duration_s, connections, wrk_threads)
    return BuiltinLoad(duration_s, connections)


# --- requests ------------------------------------------------------------------


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


# --- memory --------------------------------------------------------------------


def smaps_rollup_kib(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0])
    return values


def total_pss_kib(pids: Iterable[int]) -> int:
    """The proportional set size of these processes together: shared pages counted once."""
    return sum(smaps_rollup_kib(pid)["Pss"] for pid in pids)


def stack_memory(stack: LocalStack) -> dict[str, Any]:
    masters = list(stack.master_pids().values())
    workers = stack.worker_pids()
    if not masters or not workers:
        raise BenchError(f"no Gunicorn master or workers to measure in {stack.runtime_dir}")
    # Every instance's master (the local stack runs two, each with half the workers).
    master_pss = total_pss_kib(masters)
    worker_kib = [smaps_rollup_kib(pid) for pid in workers]
    # The largest worker stands for "one worker": the others differ only by what they touched.
    largest = max(worker_kib, key=lambda kib: kib["Pss"])
    return {
        "workers": len(workers),
        "instances": len(masters),
        "total_pss_mib": (master_pss + sum(k["Pss"] for k in worker_kib)) / 1024,
        "master_pss_mib": master_pss / 1024,
        "worker_pss_mib": largest["Pss"] / 1024,
        "worker_rss_mib": largest["Rss"] / 1024,
    }


def concurrent_traffic(
    base_url: str, requests: list[Request], count: int, connections: int
) -> None:
    """Each request `count` times over `connections` parallel connections (a new one per
    request), so that every worker of the stack serves some of each."""
    host, port, _ = check_loopback(base_url)

    def one(request: Request) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
        try:
            check_answer(request, *send(connection, request))
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=connections) as pool:
        for request in requests:
            list(pool.map(one, [request] * count))  # raises the first failure


# --- the demo models and their requests ------------------------------------------


@dataclasses.dataclass
class DemoPayload:
    name: str
    version: int
    instances: list[dict[str, Any]]
    features: list[str]
    pickle_path: Path
    onnx_path: Path | None  # the compiled form, when it passed parity at publish

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
        payloads.append(DemoPayload(demo.name, version, instances, names, pickle_path, onnx_path))
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
# Many-row loads: long enough for a few hundred requests, short enough for 21 of them.
BATCH_LOAD_S = 3
BATCH_WARM_UP_REQUESTS = 4
SINGLE_ROW_PROTOCOLS = (V2_JSON, V2_BINARY, MLFLOW_FORMAT)  # native: the P1 row itself
BATCH_PROTOCOLS = (NATIVE_LISTS, NATIVE, V2_JSON, V2_BINARY, MLFLOW_FORMAT)
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


# --- one round of measurements -----------------------------------------------------


class Round:
    """Runs the stacks one after the other and records each figure under a key:
    single/<who>/<model> (a load), batch/<who>/<model> (rows/s), memory/<stack>,
    inproc/<call>/<rows>/<model> (seconds per call)."""

    def __init__(
        self,
        settings: BenchSettings,
        load_generator: LoadGenerator,
        workdir: Path,
        store_dir: Path,
        payloads: list[DemoPayload],
        number: int,
    ):
        self.settings = settings
        self.load_generator = load_generator
        self.workdir = workdir
        self.store_dir = store_dir
        self.payloads = {p.name: p for p in payloads}
        self.number = number
        self.figures: dict[str, dict[str, Any]] = {}
        self.front = "nginx"

    # -- recording --------------------------------------------------------------

    def load(
        self, key: str, base_url: str, request: Request, rate: float | None = None
    ) -> dict[str, Any]:
        backend = warm_up(base_url, request)
        progress(f"load {key}" + (f" paced at {rate:.0f} req/s" if rate else ""))
        result = self.load_generator.run(
            base_url + request.path, request.body, request.headers, rate
        )
        self.figures[key] = {
            "requests": result.requests,
            "errors": result.errors,
            "seconds": round(result.seconds, 3),
            "requests_per_s": result.requests_per_s,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "backend": backend,
            **({"target_requests_per_s": rate} if rate else {}),
        }
        return self.figures[key]

    def paced(self, key: str, base_url: str, request: Request, peak: dict[str, Any]) -> None:
        """P5: the same request at PACED_FRACTION of the rate the closed loop reached."""
        if peak["requests_per_s"] <= 0:
            raise BenchError(f"{request.label}: no successful request to pace from")
        self.load(key, base_url, request, rate=PACED_FRACTION * peak["requests_per_s"])

    def batch(self, key: str, base_url: str, request: Request) -> None:
        """Rows/s of the same many-row request under the concurrent closed loop (every
        worker busy, as in production), over a shorter load than the single-row ones."""
        backend = warm_up(base_url, request, count=BATCH_WARM_UP_REQUESTS)
        duration = min(self.settings.duration_s, BATCH_LOAD_S)
        progress(f"{request.rows:,}-row load {key} ({duration} s)")
        result = self.load_generator.run(
            base_url + request.path, request.body, request.headers, duration_s=duration
        )
        self.figures[key] = {
            "rows_per_s": result.requests_per_s * request.rows,
            "requests": result.requests,
            "errors": result.errors,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "backend": backend,
        }

    def memory(self, key: str, stack: LocalStack) -> None:
        self.figures[key] = stack_memory(stack)

    @contextlib.contextmanager
    def stack(
        self,
        name: str,
        *,
        app: str | None = None,
        env: dict[str, str] | None = None,
        workers: int | None = None,
    ) -> Iterator[LocalStack]:
        extra_env = {**self.settings.worker_env, **(env or {})}
        if app is not None:
            # Gunicorn imports the app by module path, so the repository root must be
            # importable from wherever the bench was started.
            extra_env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            )
        stack = LocalStack(
            runtime_dir=self.workdir / f"round-{self.number}" / name,
            store=self.store_dir,
            host=LOOPBACK,
            port=free_port(),
            workers=workers or self.settings.workers,
            extra_env=extra_env,
            **({"app": app} if app else {}),
        )
        progress(f"starting the {name} stack on {stack.url}")
        try:
            stack.start(ready_timeout=STACK_READY_TIMEOUT_S)
            self.front = "nginx" if stack.use_nginx else "gunicorn"
            yield stack
        finally:
            stack.stop()

    # -- the stacks -------------------------------------------------------------

    def run(self) -> dict[str, dict[str, Any]]:
        self.in_process()
        self.hello()
        self.naive()
        self.service()
        self.monitoring_off()
        self.backend_forced()
        for workers in MEMORY_WORKERS:
            self.memory_stack(workers)
        self.peers()
        return self.figures

    def in_process(self) -> None:
        """Per-call timings with no HTTP, while no stack runs, with one worker's share of
        native threads: LoadedModel.predict (what the API calls: validation, and
        probabilities for classifiers) through the backend it chose, again through the
        pickle when that was another, and the estimator's own predict on prepared rows."""
        store = ModelStore(self.store_dir)
        budget = self.settings.repeat_budget_s
        with threadpool_limits(limits=self.settings.threads_per_worker):
            for payload in self.payloads.values():
                progress(f"in-process: {payload.name}")
                model: LoadedModel = load(store, payload.name, payload.version)
                models = {"loaded-model": model}
                if backend_name(model) not in (SKLEARN_BACKEND, NO_BACKEND):
                    models["loaded-model-sklearn"] = load(
                        store, payload.name, payload.version, backend=SKLEARN_BACKEND
                    )
                for rows in (1, BATCH_ROWS):
                    instances = payload.instances[:rows]
                    for call, loaded in models.items():
                        self.figures[f"inproc/{call}/{rows}/{payload.name}"] = {
                            "seconds": median_seconds(
                                lambda m=loaded, i=instances: m.predict(i), budget
                            ),
                            "backend": backend_name(loaded),
                        }
                    if rows == BATCH_ROWS:
                        self.compute_bound(payload.name, model, instances)
                    prepared = model.prepare(instances)
                    self.figures[f"inproc/estimator/{rows}/{payload.name}"] = {
                        "seconds": median_seconds(
                            lambda e=model.estimator, x=prepared: e.predict(x), budget
                        ),
                        "backend": SKLEARN_BACKEND,
                    }

    def compute_bound(self, name: str, model: LoadedModel, instances: list[Any]) -> None:
        """The backend's own time on validated rows, and the rows/s it allows when every
        core does nothing else: what no handler of these rows can beat on this machine."""
        values = model.validate(instances)
        seconds = median_seconds(
            lambda: model.backend.run(values, model.has_proba), self.settings.repeat_budget_s
        )
        backend = backend_name(model)
        self.figures[f"inproc/backend/{BATCH_ROWS}/{name}"] = {
            "seconds": seconds,
            "backend": backend,
        }
        cores = os.cpu_count() or 1
        self.figures[f"batch/compute-bound/{name}"] = {
            "rows_per_s": cores * len(instances) / seconds,
            "cores": cores,
            "backend": backend,
        }

    def hello(self) -> None:
        # The ceiling gets the largest single-row body, so it parses at least as much JSON
        # as any model's request.
        body = max((p.objects_body(1) for p in self.payloads.values()), key=len)
        request = Request("hello", HELLO_PATH, body, 1, answer="none")
        with self.stack("hello", app=HELLO_APP) as stack:
            peak = self.load("single/hello", stack.url, request)
            # What bounds P5 and P3 here, whatever the handler does: the ceiling's own
            # p99 ÷ p50 when paced the same way, and its rows/s when it only reads the
            # 1,000-row bodies and parses them with orjson.
            self.paced("paced/hello", stack.url, request, peak)
            for payload in self.payloads.values():
                rows = Request(
                    "hello",
                    PARSE_HELLO_PATH,
                    payload.lists_body(BATCH_ROWS),
                    BATCH_ROWS,
                    answer="none",
                )
                self.batch(f"batch/hello/{payload.name}", stack.url, rows)
                binary = service_request(V2_BINARY, payload, BATCH_ROWS)
                binary = dataclasses.replace(binary, path=READ_HELLO_PATH, answer="none")
                self.batch(f"batch/hello-binary/{payload.name}", stack.url, binary)
            warm_up(stack.url, request)  # as for the models: no fresh, untouched worker
            self.memory("memory/hello", stack)

    def naive(self) -> None:
        for payload in self.payloads.values():
            env = {NAIVE_MODEL_ENV: str(payload.pickle_path)}
            with self.stack(f"naive-{payload.name}", app=NAIVE_APP, env=env) as stack:
                if payload.name in SINGLE_ROW_REFERENCE_MODELS:
                    single = naive_request(payload, 1)
                    peak = self.load(f"single/naive/{payload.name}", stack.url, single)
                    if payload.name == IRIS:
                        self.paced(f"paced/naive/{IRIS}", stack.url, single, peak)
                batch = naive_request(payload, BATCH_ROWS)
                self.batch(f"batch/naive/{payload.name}", stack.url, batch)
                warm_up(stack.url, naive_request(payload, 1))
                self.memory(f"memory/naive/{payload.name}", stack)
            if payload.name in SINGLE_ROW_REFERENCE_MODELS and payload.onnx_path is not None:
                # P1 and P2's bound: the same onnxruntime call with none of the service's work.
                env = {NAIVE_ONNX_ENV: str(payload.onnx_path)}
                with self.stack(f"naive-onnx-{payload.name}", app=NAIVE_ONNX_APP, env=env) as stack:
                    single = naive_request(payload, 1)
                    self.load(f"single/naive-onnx/{payload.name}", stack.url, single)

    def service(self) -> None:
        iris = self.payloads[IRIS]
        with self.stack("model-service") as stack:
            for payload in self.payloads.values():
                self.load(
                    f"single/service/{payload.name}",
                    stack.url,
                    service_request(NATIVE, payload, 1),
                )
            peak = self.figures[f"single/service/{IRIS}"]
            self.paced(f"paced/service/{IRIS}", stack.url, service_request(NATIVE, iris, 1), peak)
            for protocol in SINGLE_ROW_PROTOCOLS:
                self.load(
                    f"single/{protocol}/{IRIS}", stack.url, service_request(protocol, iris, 1)
                )
            for payload in self.payloads.values():
                for protocol in BATCH_PROTOCOLS:
                    request = service_request(protocol, payload, BATCH_ROWS)
                    self.batch(f"batch/{protocol}/{payload.name}", stack.url, request)
            # A worker recycled by max_requests during the load has touched little yet:
            # let the workers serve every model again before their memory is read.
            for payload in self.payloads.values():
                warm_up(stack.url, service_request(NATIVE, payload, 1))
            self.memory("memory/service", stack)

    def monitoring_off(self) -> None:
        with self.stack("model-service-monitoring-off", env=MONITORING_OFF_ENV) as stack:
            for name in MONITORING_OFF_MODELS:
                request = service_request(NATIVE, self.payloads[name], 1)
                self.load(f"single/monitoring-off/{name}", stack.url, request)

    def backend_forced(self) -> None:
        """The service with the unpickled estimator forced, when answers name a backend
        (the compiled one is there); otherwise nothing to compare."""
        named = {
            self.figures[f"single/service/{name}"]["backend"]
            for name in SINGLE_ROW_REFERENCE_MODELS
        }
        if named == {NO_BACKEND}:
            progress("the answers name no backend: no run with the pickle backend forced")
            return
        env = {BACKEND_ENV: SKLEARN_BACKEND}
        with self.stack("model-service-backend-sklearn", env=env) as stack:
            for name in SINGLE_ROW_REFERENCE_MODELS:
                request = service_request(NATIVE, self.payloads[name], 1)
                self.load(f"single/backend-sklearn/{name}", stack.url, request)

    def memory_stack(self, workers: int) -> None:
        """P4: the service with 1 and with 4 workers, read after the same warm-up traffic."""
        with self.stack(f"model-service-{workers}w", workers=workers) as stack:
            progress(f"warm-up traffic, then memory: {self.settings.describe_workers(workers)}")
            requests = [
                service_request(NATIVE, payload, rows)
                for payload in self.payloads.values()
                for rows in (1, BATCH_ROWS)
            ]
            concurrent_traffic(
                stack.url, requests, MEMORY_WARM_UP_REQUESTS, MEMORY_WARM_UP_CONNECTIONS
            )
            self.memory(f"memory/service-{workers}w", stack)

    def peers(self) -> None:
        venv = self.settings.peers_venv
        if venv is None or not (venv / "bin" / "mlflow").exists():
            return
        model_dirs = build_mlflow_models(venv, self.workdir / "mlflow-models", self.payloads)
        with mlflow_servers(venv, model_dirs, self.workdir) as urls:
            for name, payload in self.payloads.items():
                if name in SINGLE_ROW_REFERENCE_MODELS:
                    request = mlflow_serve_request(payload, 1)
                    self.load(f"single/mlflow-serve/{name}", urls[name], request)
                request = mlflow_serve_request(payload, BATCH_ROWS)
                self.batch(f"batch/mlflow-serve/{name}", urls[name], request)


# --- MLflow's own scoring server (optional peer) -----------------------------------

MLFLOW_BUILD_SCRIPT = """\
import json, pickle, shutil, sys
import mlflow.sklearn

for source, target in json.loads(sys.argv[1]):
    with open(source, "rb") as handle:
        model = pickle.load(handle)
    mlflow.sklearn.save_model(
        model, target, serialization_format="pickle", pip_requirements=["scikit-learn"]
    )
    # Serve the very bytes model-service and the naive handler load.
    shutil.copyfile(source, target + "/model.pkl")
"""


def peers_env(venv: Path) -> dict[str, str]:
    env = dict(os.environ)
    # `mlflow models serve` execs uvicorn by name.
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    env.pop("PYTHONPATH", None)
    return env


def mlflow_version(venv: Path) -> str | None:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        env=peers_env(venv),
        check=False,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def build_mlflow_models(
    venv: Path, folder: Path, payloads: dict[str, DemoPayload]
) -> dict[str, Path]:
    """MLflow model directories (sklearn flavor) around the same pickles, built once."""
    dirs = {name: folder / name for name in payloads}
    if all((d / "MLmodel").exists() for d in dirs.values()):
        return dirs
    progress("building MLflow model directories from the same pickles")
    pairs = [[str(p.pickle_path), str(dirs[name])] for name, p in payloads.items()]
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", MLFLOW_BUILD_SCRIPT, json.dumps(pairs)],
        capture_output=True,
        text=True,
        timeout=PEER_BUILD_TIMEOUT_S,
        env=peers_env(venv),
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"building the MLflow models failed: {done.stderr[-2000:]}")
    return dirs


@contextlib.contextmanager
def mlflow_servers(
    venv: Path, model_dirs: dict[str, Path], workdir: Path
) -> Iterator[dict[str, str]]:
    """`mlflow models serve -w 2 --env-manager local` per model on free loopback ports,
    started together (they idle while another is measured), each in a session of its
    own; stopped by process group id (uvicorn and its workers are in it)."""
    processes: dict[str, tuple[subprocess.Popen, str, Path]] = {}
    try:
        for name, model_dir in model_dirs.items():
            port = free_port()
            log_path = workdir / f"mlflow-{name}.log"
            command = [str(venv / "bin" / "mlflow"), "models", "serve", "-m", str(model_dir)]
            command += ["-w", "2", "--env-manager", "local", "-h", LOOPBACK, "-p", str(port)]
            progress(f"starting mlflow models serve for {name} on {LOOPBACK}:{port}")
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    command,
                    env=peers_env(venv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            processes[name] = (process, f"http://{LOOPBACK}:{port}", log_path)
        deadline = time.monotonic() + PEER_READY_TIMEOUT_S
        for process, base_url, log_path in processes.values():
            wait_for_ping(process, base_url, log_path, deadline)
        yield {name: base_url for name, (_, base_url, _) in processes.items()}
    finally:
        for process, _, _ in processes.values():
            stop_process_group(process)


def wait_for_ping(
    process: subprocess.Popen, base_url: str, log_path: Path, deadline: float
) -> None:
    while True:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise BenchError(f"mlflow models serve exited ({process.returncode}):\n{tail}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(base_url + "/ping", timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"mlflow models serve was not ready in {PEER_READY_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def stop_process_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the session the bench started (its leader's pid is the group id), then
    SIGKILL to what is left of it after the timeout."""
    group = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            process.poll()
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    process.wait(timeout=5)


# --- rounds, medians and rows ------------------------------------------------------


def median_figures(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each figure's median over the rounds; requests and errors are summed, and the
    backend is the one any round's answers named."""
    merged: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(k for figures in rounds for k in figures):
        present = [figures[key] for figures in rounds if key in figures]
        entry: dict[str, Any] = {}
        for field in present[0]:
            values = [p[field] for p in present if field in p]
            if field == "backend":
                entry[field] = next((v for v in values if v != NO_BACKEND), NO_BACKEND)
            elif field in ("requests", "errors", "workers"):
                entry[field] = sum(values) if field != "workers" else values[0]
            else:
                entry[field] = statistics.median(values)
        merged[key] = entry
    return merged


@dataclasses.dataclass
class Row:
    """One line of the table, and one object of the JSON "goals" or "rows" list."""

    key: str  # the figure it shows, e.g. single/service/iris-classifier
    section: str
    label: str
    unit: str = ""
    value: float | None = None
    backend: str = ""
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    ratio: float | None = None
    ratio_of: str = ""
    goal: str = ""
    target: float | None = None
    comparison: str = ""
    passed: bool | None = None
    # The most the service can reach on this machine, from the bound rows of this run: a
    # handler doing less of the same work (P1, P2, P3), the ceiling's own tail (P5).
    bound: float | None = None
    note: str = ""
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {
    "goals": "Goals: ratios of two figures of this run, with their targets, and the bound "
    "set by a handler that does less (rows below)",
    "single": "Single-row predictions through {front}, req/s (closed loop); ratio ÷ the row named",
    "paced": f"Single-row load paced at {PACED_FRACTION:.0%} of the closed loop's rate (P5): "
    "achieved req/s, target in the row; ratio p99 ÷ p50",
    "batch": "1,000-row requests through {front}, rows/s (closed loop, 3 s each); "
    "ratio ÷ the naive handler",
    "inproc": "In process, no HTTP: median ms per call; ratio ÷ the estimator's own predict",
    "memory": "Memory: PSS of the Gunicorn master + workers (/proc/PID/smaps_rollup), MiB",
    "peers": "Peers: MLflow's scoring server (mlflow models serve -w 2), the same pickles and "
    "rows; ratio ÷ naive",
}
# The figure a row shows for each kind of key, its unit, and a scale.
MAIN_FIGURE = {
    "single": ("requests_per_s", "req/s", 1.0),
    "paced": ("requests_per_s", "req/s", 1.0),
    "batch": ("rows_per_s", "rows/s", 1.0),
    "inproc": ("seconds", "ms", 1000.0),
    "memory": ("total_pss_mib", "MiB", 1.0),
}


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def figure_row(
    figures: dict[str, dict[str, Any]],
    key: str,
    section: str,
    label: str,
    of: tuple[str, str] | None = None,
    backend: str | None = None,
) -> Row | None:
    """The row of one figure, with its ratio to the figure `of` names: (key, label)."""
    found = figures.get(key)
    if found is None:
        return None
    field, unit, scale = MAIN_FIGURE[key.split("/")[0]]
    reference = figures.get(of[0], {}).get(field) if of else None
    return Row(
        key=key,
        section=section,
        label=label,
        unit=unit,
        value=found[field] * scale,
        backend=backend or found.get("backend", ""),
        p50_ms=found.get("p50_ms"),
        p99_ms=found.get("p99_ms"),
        errors=found.get("errors"),
        ratio=ratio(found[field], reference),
        ratio_of=of[1] if of and reference else "",
        figures=dict(found),
    )


def detail_rows(
    figures: dict[str, dict[str, Any]],
    names: list[str],
    settings: BenchSettings,
    peer_version: str | None,
    peer_note: str,
) -> list[Row]:
    rows: list[Row | None] = []

    def add(key: str, section: str, label: str, of=None, backend=None) -> None:
        rows.append(figure_row(figures, key, section, label, of, backend))

    hello = ("single/hello", "hello")
    add("single/hello", "single", "hello (ceiling)", hello)
    for name in names:
        naive = f"single/naive/{name}"
        reference = (naive, "naive") if naive in figures else hello
        add(naive, "single", f"naive {name}", hello, backend="pickle")
        label = f"bound: naive on onnxruntime, {name}"
        add(f"single/naive-onnx/{name}", "single", label, hello, backend="onnxruntime")
        add(f"single/service/{name}", "single", name, reference)
        add(f"single/backend-sklearn/{name}", "single", f"{name}, backend=sklearn", reference)
        add(f"single/monitoring-off/{name}", "single", f"{name}, monitoring off", reference)
        for protocol in SINGLE_ROW_PROTOCOLS:
            native = (f"single/service/{name}", "native")
            add(
                f"single/{protocol}/{name}",
                "single",
                f"{name}, {PROTOCOL_LABELS[protocol]}",
                native,
            )
    if not any(key.startswith("single/backend-sklearn/") for key in figures):
        note = "not measured: the answers name no backend (the pickle is the only one)"
        rows.append(Row("single/backend-sklearn", "single", f"{BACKEND_ENV}=sklearn", note=note))

    paced = (
        ("paced/hello", "hello (ceiling)", None),
        (f"paced/naive/{IRIS}", f"naive {IRIS}", "pickle"),
        (f"paced/service/{IRIS}", IRIS, None),
    )
    for key, label, backend in paced:
        if key in figures:
            target = figures[key]["target_requests_per_s"]
            add(key, "paced", f"{label}, target {target:,.0f} req/s", backend=backend)
            rows[-1].ratio = ratio(rows[-1].p99_ms, rows[-1].p50_ms)
            rows[-1].ratio_of = "p99 ÷ p50"

    for name in names:
        naive = (f"batch/naive/{name}", "naive")
        cores = figures.get(f"batch/compute-bound/{name}", {}).get("cores", "all")
        add(
            f"batch/compute-bound/{name}",
            "batch",
            f"bound: backend alone, {cores} cores, {name}",
            naive,
        )
        add(f"batch/hello/{name}", "batch", f"bound: hello + orjson parse, {name}", naive)
        add(f"batch/hello-binary/{name}", "batch", f"bound: hello reading v2 binary, {name}", naive)
        add(f"batch/naive/{name}", "batch", f"naive {name}", naive, backend="pickle")
        for protocol in BATCH_PROTOCOLS:
            add(f"batch/{protocol}/{name}", "batch", f"{name}, {PROTOCOL_LABELS[protocol]}", naive)

    calls = {"loaded-model": "LoadedModel", "loaded-model-sklearn": "LoadedModel"}
    calls["estimator"] = "estimator"
    for name in names:
        for count in (1, BATCH_ROWS):
            estimator = (f"inproc/estimator/{count}/{name}", "estimator")
            for call, label in calls.items():
                label = f"{name}, {count:,} row{'s' if count > 1 else ''}, {label}.predict"
                add(f"inproc/{call}/{count}/{name}", "inproc", label, estimator)
        label = f"{name}, {BATCH_ROWS:,} rows, backend alone"
        estimator = (f"inproc/estimator/{BATCH_ROWS}/{name}", "estimator")
        add(f"inproc/backend/{BATCH_ROWS}/{name}", "inproc", label, estimator)

    one_worker = (f"memory/service-{MEMORY_WORKERS[0]}w", "1 worker")
    for workers in MEMORY_WORKERS:
        add(
            f"memory/service-{workers}w",
            "memory",
            f"model-service, {workers}w, P4 warm-up",
            one_worker,
        )
    add("memory/service", "memory", f"model-service, {settings.workers}w, after the loads")
    add("memory/hello", "memory", f"hello, {settings.workers}w, after the load")
    for name in names:
        add(f"memory/naive/{name}", "memory", f"naive {name}, {settings.workers}w")
    for row in rows:
        if row is not None and row.section == "memory":
            row.label += f"; largest worker {row.figures['worker_pss_mib']:.0f}"

    if peer_version is None:
        rows.append(Row("peers/mlflow", "peers", "mlflow models serve", note=peer_note))
    for name in names:
        label = f"{name}, MLflow {peer_version}"
        naive = (f"single/naive/{name}", "naive")
        add(f"single/mlflow-serve/{name}", "peers", f"{label}, 1 row", naive, "pickle")
        naive = (f"batch/naive/{name}", "naive")
        add(f"batch/mlflow-serve/{name}", "peers", f"{label}, 1,000 rows", naive, "pickle")
    return [row for row in rows if row is not None]


def goal_rows(figures: dict[str, dict[str, Any]], names: list[str]) -> list[Row]:
    """Each goal: the figure it judges, and the ratio (numerator ÷ denominator) to its target."""
    specs = [
        ("P1", f"{IRIS}, 1 row", f"single/service/{IRIS}", "single/hello", "hello"),
        ("P2", f"{FOREST}, 1 row", f"single/service/{FOREST}", "single/hello", "hello"),
    ]
    for name in names:
        for goal, protocol in (("P3 native", NATIVE_LISTS), ("P3 v2 binary", V2_BINARY)):
            label = f"{name}, 1,000 rows, {PROTOCOL_LABELS[protocol]}"
            specs.append((goal, label, f"batch/{protocol}/{name}", f"batch/naive/{name}", "naive"))
    most, fewest = (f"memory/service-{w}w" for w in (MEMORY_WORKERS[-1], MEMORY_WORKERS[0]))
    specs.append(
        ("P4", f"model-service PSS, {MEMORY_WORKERS[-1]} workers", most, fewest, "1 worker")
    )
    paced = f"paced/service/{IRIS}"
    specs.append(("P5", f"{IRIS} at {PACED_FRACTION:.0%} of P1's rate", paced, paced, "p99 ÷ p50"))
    for name in MONITORING_OFF_MODELS:
        key = f"single/service/{name}"
        specs.append(("M", f"{name}, monitoring on", key, f"single/monitoring-off/{name}", "off"))

    rows = []
    for goal, label, key, reference_key, of in specs:
        comparison, target = GOALS[goal]
        row = figure_row(figures, key, "goals", label) or Row(key, "goals", label)
        if goal == "P5":
            row.ratio = ratio(row.p99_ms, row.p50_ms)
            if "target_requests_per_s" in row.figures:
                row.label += f", {row.figures['target_requests_per_s']:,.0f} req/s"
        else:
            field = MAIN_FIGURE[key.split("/")[0]][0]
            reference = figures.get(reference_key, {}).get(field)
            row.ratio = ratio(row.figures.get(field), reference)
        row.ratio_of, row.goal, row.target, row.comparison = of, goal, target, comparison
        if row.ratio is not None:
            row.passed = row.ratio >= target if comparison == ">=" else row.ratio <= target
        if goal.startswith("P3"):
            row.bound = p3_bound(figures, key.split("/")[1], key.split("/")[2])
        elif goal in ("P1", "P2"):
            # The naive handler on the same onnxruntime call: the service does strictly more.
            bound = figures.get(key.replace("/service/", "/naive-onnx/"), {})
            hello = figures.get(reference_key, {})
            row.bound = ratio(bound.get("requests_per_s"), hello.get("requests_per_s"))
        elif goal == "P5":
            # The ceiling paced the same way: the tail of wrk, Nginx and Gunicorn alone.
            hello = figures.get("paced/hello", {})
            row.bound = ratio(hello.get("p99_ms"), hello.get("p50_ms"))
        rows.append(row)
    return rows


def p3_bound(figures: dict[str, dict[str, Any]], protocol: str, name: str) -> float | None:
    """The most a 1,000-row handler can reach, as a ratio to the naive handler: it must
    both take the body in (hello reading it, and parsing it when it is JSON) and run the
    backend, on the same cores, so their times per row add up."""
    intake = "hello-binary" if protocol == V2_BINARY else "hello"
    rates = [
        figures.get(key, {}).get("rows_per_s")
        for key in (f"batch/{intake}/{name}", f"batch/compute-bound/{name}")
    ]
    naive = figures.get(f"batch/naive/{name}", {}).get("rows_per_s")
    if not all(rates) or not naive:
        return None
    return 1.0 / sum(1.0 / rate for rate in rates) / naive


# --- the run -----------------------------------------------------------------------


def mlflow_peer(settings: BenchSettings) -> tuple[str | None, str]:
    """The MLflow version to compare with (None: no MLflow rows), and what the table says."""
    venv = settings.peers_venv
    if venv is None:
        return None, "left out (--no-peers)"
    if not (venv / "bin" / "mlflow").exists():
        return None, PEERS_HINT
    version = mlflow_version(venv)
    if version is None:
        return None, f"not usable: mlflow does not import in {venv}"
    return version, f"mlflow {version}"


@dataclasses.dataclass(frozen=True)
class Workdir:
    """A scratch directory with the demo models trained into its store, their payloads and
    the load generator the settings ask for: what every benchmark script starts from."""

    path: Path
    store_dir: Path
    payloads: list[DemoPayload]
    load_generator: LoadGenerator


@contextlib.contextmanager
def demo_workdir(settings: BenchSettings, prefix: str) -> Iterator[Workdir]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(tmp)
        store_dir = path / "model_store"
        progress(f"training the demo models into {store_dir}")
        store = ModelStore(store_dir)
        train_demo_models(store, progress=False)
        load_generator = choose_load_generator(
            settings.load_generator,
            path,
            settings.duration_s,
            settings.connections,
            settings.wrk_threads,
        )
        yield Workdir(path, store_dir, demo_payloads(store), load_generator)


def run(settings: BenchSettings) -> dict[str, Any]:
    started = time.monotonic()
    peer_version, peer_note = mlflow_peer(settings)
    if peer_version is None:
        settings = dataclasses.replace(settings, peers_venv=None)
    with demo_workdir(settings, "model-service-bench-") as work:
        workdir, store_dir, payloads = work.path, work.store_dir, work.payloads
        load_generator = work.load_generator
        rounds = []
        for number in range(1, settings.rounds + 1):
            progress(f"round {number} of {settings.rounds}")
            one = Round(settings, load_generator, workdir, store_dir, payloads, number)
            rounds.append(one.run())
    figures = median_figures(rounds)
    names = [p.name for p in payloads]
    return {
        "settings": {
            "duration_s": settings.duration_s,
            "connections": settings.connections,
            "workers": settings.workers,
            "worker_class": settings.worker_class,
            "threads": settings.threads,
            "rounds": settings.rounds,
            "cpus": os.cpu_count(),
            "front": one.front,
            "native_threads_per_worker": settings.threads_per_worker,
        },
        "load_generator": {"tool": load_generator.name, "description": load_generator.describe()},
        "peers": {"mlflow": peer_version, "note": peer_note},
        "elapsed_s": round(time.monotonic() - started, 1),
        "goals": [row.as_json() for row in goal_rows(figures, names)],
        "rows": [
            row.as_json() for row in detail_rows(figures, names, settings, peer_version, peer_note)
        ],
    }


# --- output --------------------------------------------------------------------

COLUMNS = (  # (title, width, alignment)
    ("row", 58, "<"),
    ("backend", 12, "<"),
    ("figure", 15, ">"),
    ("p50 ms", 8, ">"),
    ("p99 ms", 8, ">"),
    ("err", 4, ">"),
    ("ratio", 7, ">"),
    (" of", 11, "<"),
    ("target", 8, "<"),
    ("result", 6, "<"),
)
TABLE_WIDTH = sum(width for _, width, _ in COLUMNS)


def format_figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    digits = {"rows/s": 0, "ms": 3}.get(unit, 1)
    return f"{value:,.{digits}f} {unit}"


def format_row(row: dict[str, Any]) -> str:
    def number(value: float | None) -> str:
        if value is None:
            return ""
        return f"{value:,.3f}" if abs(value) < 0.1 else f"{value:,.2f}"

    label = f"{row['goal'].split()[0]:<3}{row['label']}" if row["goal"] else row["label"]
    if row["note"]:
        return f"{label:<{COLUMNS[0][1]}}{row['note']}"
    target = ""
    if row["target"] is not None:
        target = f"{'≥' if row['comparison'] == '>=' else '≤'} {row['target']:g}"
    result = {True: "pass", False: "FAIL", None: "-"}[row["passed"]] if row["goal"] else ""
    if row.get("bound") is not None:
        result += f" (bound {row['bound']:.2f})"
    cells = [
        label,
        row["backend"],
        format_figure(row["value"], row["unit"]),
        number(row["p50_ms"]),
        number(row["p99_ms"]),
        "" if row["errors"] is None else str(row["errors"]),
        number(row["ratio"]),
        " " + row["ratio_of"],
        target,
        result,
    ]
    columns = zip(cells, COLUMNS, strict=True)
    return "".join(f"{cell:{align}{width}}" for cell, (_, width, align) in columns).rstrip()


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    front = "Nginx" if s["front"] == "nginx" else "Gunicorn (no Nginx installed)"
    threads = f" × {s['threads']} threads" if s["worker_class"] == "gthread" else ""
    rounds = f"{s['rounds']} round{'s, medians' if s['rounds'] > 1 else ''}"
    lines = [
        f"model-service bench: {front} -> Gunicorn, {s['workers']} {s['worker_class']} workers"
        f"{threads} (P4: 1 and {MEMORY_WORKERS[-1]}), {s['cpus']} CPUs, "
        f"{s['native_threads_per_worker']} native thread(s) per worker; {rounds}; "
        f"{results['elapsed_s']:.0f} s",
        f"load: {results['load_generator']['description']}",
        "",
        "".join(f"{title:{align}{width}}" for title, width, align in COLUMNS).rstrip(),
    ]
    sections: dict[str, list[dict[str, Any]]] = {"goals": results["goals"]}
    for row in results["rows"]:
        sections.setdefault(row["section"], []).append(row)
    for section, title in SECTIONS.items():
        if section in sections:
            heading = f"-- {title.format(front=front)} "
            lines.append(heading + "-" * max(0, TABLE_WIDTH - len(heading)))
            lines += [format_row(row) for row in sections[section]]
    counts = collections.Counter(row["passed"] for row in results["goals"])
    lines += [
        "",
        f"goals: {counts[True]} pass, {counts[False]} fail, {counts[None]} not measured "
        "(figures from one shared machine move between runs; the ratios are the result)",
    ]
    errors = sum(row["errors"] or 0 for row in results["rows"])
    if errors:
        lines.append(f"WARNING: {errors} requests failed under load; the figures are suspect.")
    return "\n".join(lines)


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {path}")


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _exit_on_sigterm(signum, _frame) -> None:
    # Turn SIGTERM into an exception so the finally blocks stop the stacks.
    raise SystemExit(128 + signum)


def report(
    name: str,
    measure: Callable[[], dict[str, Any]],
    render_results: Callable[[dict[str, Any]], str],
    json_path: Path | None,
    failed: Callable[[dict[str, Any]], bool],
) -> int:
    """A benchmark script's main: measure, print the table, write the JSON; exit status 1
    on an error or when ``failed`` says requests failed (figures are reported, not
    enforced)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        results = measure()
    except (BenchError, StackError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    print(render_results(results))
    write_json(json_path, results)
    return 1 if failed(results) else 0


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    # Goals are reported, not enforced; failed requests make the figures worthless.
    return report(
        "bench",
        lambda: run(settings),
        render,
        settings.json_path,
        lambda results: any(row["errors"] for row in results["rows"]),
    )


if __name__ == "__main__":
    sys.exit(main())
