"""One round of `make bench`: the stacks started one after the other, and each figure
recorded under a key. Only one stack is loaded at a time; the service's stack waits idle
while each model's reference handlers are loaded, so that a goal's two figures are taken
a minute apart."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from service.localstack import LocalStack, free_port
from service.runtime.model import LoadedModel, load
from service.store import ModelStore

from .loads import LoadGenerator
from .onnx_reference import DUTIES_BINARY_PATH, DUTIES_LOG_ENV
from .payloads import (
    BATCH_ROWS,
    FOREST,
    IRIS,
    MLFLOW_FORMAT,
    NATIVE,
    NATIVE_LISTS,
    NO_BACKEND,
    REGRESSOR,
    SKLEARN_BACKEND,
    V2_BINARY,
    V2_JSON,
    DemoPayload,
    Request,
    backend_name,
    median_seconds,
    mlflow_serve_request,
    naive_request,
    service_request,
    warm_up,
)
from .peers import build_mlflow_models, mlflow_servers
from .settings import LOOPBACK, REPO_ROOT, BenchError, BenchSettings, progress
from .stacks import (
    BACKEND_ENV,
    BARE,
    BARE_WITH_PROBABILITIES,
    DUTIES,
    DUTIES_APP,
    DUTIES_BINARY,
    HELLO_APP,
    HELLO_PATH,
    MONITORING_OFF_ENV,
    NAIVE_APP,
    NAIVE_MODEL_ENV,
    NAIVE_ONNX_APP,
    NAIVE_ONNX_ENV,
    NAIVE_ONNX_PROBABILITIES_ENV,
    PARSE_HELLO_PATH,
    READ_HELLO_PATH,
    STACK_READY_TIMEOUT_S,
    concurrent_traffic,
    stack_memory,
)

# Single-row loads of the naive handler and of the service with the pickle backend forced.
SINGLE_ROW_REFERENCE_MODELS = (IRIS, FOREST)
# The service again with metrics and the request log off (feedback and drift stay on).
MONITORING_OFF_MODELS = (IRIS, REGRESSOR)
PACED_FRACTION = 0.8
MEMORY_WORKERS = (1, 4)
# The same memory read on other layouts, for what bounds P4: the local stack runs two
# Gunicorn instances (two masters, each with its own copy of the app) from 2 workers on,
# so 4 workers on one instance show the cost of a worker, and 1 worker on each of two
# instances the least any two-instance stack can weigh. (workers, instances) each.
TWO_INSTANCE_FLOOR = (2, 2)
MEMORY_LAYOUTS = ((MEMORY_WORKERS[-1], 1), TWO_INSTANCE_FLOOR)

# The warm-up before P4's memory is read, the same on both stacks: for every demo model,
# single-row and 1,000-row requests, this many of each over this many connections.
MEMORY_WARM_UP_REQUESTS = 32
MEMORY_WARM_UP_CONNECTIONS = 8
# Many-row loads: long enough for a few hundred requests, short enough for 21 of them.
BATCH_LOAD_S = 3
BATCH_WARM_UP_REQUESTS = 4
SINGLE_ROW_PROTOCOLS = (V2_JSON, V2_BINARY, MLFLOW_FORMAT)  # native: the P1 row itself
BATCH_PROTOCOLS = (NATIVE_LISTS, NATIVE, V2_JSON, V2_BINARY, MLFLOW_FORMAT)
WORKER_LIKE_SCRIPT_TIMEOUT_S = 300
# Single-row requests per figure of request_cost.py: about a second each.
REQUEST_COST_REQUESTS = 3000


def memory_key(workers: int, instances: int | None = None) -> str:
    """memory/service-4w (the stack's own layout), memory/service-4w-1i (one instance)."""
    return f"memory/service-{workers}w" + (f"-{instances}i" if instances else "")


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
        instances: int | None = None,
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
            instances=instances,
            extra_env=extra_env,
            # A baseline (another app) runs as a naive deployment would: Nginx reaches
            # Gunicorn over TCP. The service runs on its own defaults: a unix socket.
            **({"app": app, "unix_sockets": False} if app else {}),
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
        self.breakdown()
        self.request_cost()
        self.hello()
        self.naive()
        self.service()
        self.backend_forced()
        for workers in MEMORY_WORKERS:
            self.memory_stack(workers)
        for workers, instances in MEMORY_LAYOUTS:
            self.memory_stack(workers, instances)
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

    def worker_like_script(self, script: str, options: list[str]) -> Any:
        """A script of loadtests/ that times requests in a process set up as a worker
        (Prometheus's multiprocess files, the request log to a file), run on this round's
        store in a process of its own: what it wrote with --json."""
        out = self.workdir / f"{Path(script).stem}-{self.number}.json"
        command = [
            sys.executable,
            str(REPO_ROOT / "loadtests" / script),
            "--store",
            str(self.store_dir),
            *options,
            "--json",
            str(out),
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=WORKER_LIKE_SCRIPT_TIMEOUT_S
        )
        if done.returncode != 0:
            raise BenchError(f"{script} failed: {done.stderr[-2000:]}")
        return json.loads(out.read_text())

    def breakdown(self) -> None:
        """A 1,000-row request of each demo model, stage by stage, in a worker-like process
        of its own (loadtests/request_breakdown.py: Prometheus's multiprocess files, the
        request log to a file)."""
        progress("in-process: a 1,000-row request, stage by stage")
        budget = ["--budget", str(self.settings.repeat_budget_s)]
        found = self.worker_like_script("request_breakdown.py", budget)
        for name, stages in found.items():
            for stage, value in stages.items():
                if stage != "answer KiB":
                    self.figures[f"breakdown/{stage}/{name}"] = {"ms": value}

    def request_cost(self) -> None:
        """One single-row request through the WSGI app in a worker-like process of its own
        (loadtests/request_cost.py): hello, the bare handler, the same doing P1's duties,
        and the service with its defaults and with metrics and the request log off. What
        the service adds to the bare handler here is work every request does in the
        worker, whatever the load."""
        progress("in-process: one single-row request, hello, bare handler and service")
        requests = ["--requests", str(REQUEST_COST_REQUESTS)]
        found = self.worker_like_script("request_cost.py", requests)
        for row in found:
            if row["who"] == "hello":
                self.figures["request/hello"] = {"us": row["us"]}
                continue
            # Named as the stacks are: the bare handler, its duties, "service" and
            # "monitoring-off".
            self.figures[f"request/{row['who']}/{row['request']}"] = {"us": row["us"]}

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
        """The naive handler on each model's pickle: a reference, not a goal's."""
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

    @contextlib.contextmanager
    def bare_stack(
        self, payload: DemoPayload, *, probabilities: bool = False
    ) -> Iterator[LocalStack]:
        """The same onnxruntime call, orjson in and out, with none of the service's work;
        with ``probabilities``, answering a classifier's probabilities too, as the service
        does."""
        env = {NAIVE_ONNX_ENV: str(payload.onnx_path)}
        who = BARE
        if probabilities:
            env[NAIVE_ONNX_PROBABILITIES_ENV] = "1"
            who = BARE_WITH_PROBABILITIES
        with self.stack(f"{who}-{payload.name}", app=NAIVE_ONNX_APP, env=env) as stack:
            yield stack

    @contextlib.contextmanager
    def duties_stack(self, payload: DemoPayload) -> Iterator[LocalStack]:
        """The same call doing the duties P1 names, at their least (P1's bound, and P3's)."""
        name = f"{DUTIES}-{payload.name}"
        log = self.workdir / f"round-{self.number}" / f"{name}-requests.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {NAIVE_ONNX_ENV: str(payload.onnx_path), DUTIES_LOG_ENV: str(log)}
        with self.stack(name, app=DUTIES_APP, env=env) as stack:
            yield stack

    def single_row_references(self, payload: DemoPayload) -> None:
        """P1's reference and its bound for one model, one stack after the other."""
        if payload.onnx_path is None:
            return
        single = naive_request(payload, 1)
        with self.bare_stack(payload) as stack:
            self.load(f"single/{BARE}/{payload.name}", stack.url, single)
        with self.duties_stack(payload) as stack:
            self.load(f"single/{DUTIES}/{payload.name}", stack.url, single)

    def batch_references(self, payload: DemoPayload) -> None:
        """P3's reference and its bounds for one model, on the same 1,000-row bodies."""
        if payload.onnx_path is None:
            return
        batch = naive_request(payload, BATCH_ROWS)
        with self.bare_stack(payload) as stack:
            self.batch(f"batch/{BARE}/{payload.name}", stack.url, batch)
        with self.duties_stack(payload) as stack:
            self.batch(f"batch/{DUTIES}/{payload.name}", stack.url, batch)
            # P3 v2 binary's: the same on the service's own v2 binary body.
            binary = service_request(V2_BINARY, payload, BATCH_ROWS)
            binary = dataclasses.replace(binary, path=DUTIES_BINARY_PATH)
            self.batch(f"batch/{DUTIES_BINARY}/{payload.name}", stack.url, binary)
        if payload.answers_probabilities:
            # The same handler and call, answering what the service answers, on the same
            # 1,000-row body as the labels-only handler's.
            with self.bare_stack(payload, probabilities=True) as stack:
                self.batch(f"batch/{BARE_WITH_PROBABILITIES}/{payload.name}", stack.url, batch)

    def service(self) -> None:
        iris = self.payloads[IRIS]
        with self.stack("model-service") as stack:
            # Each goal's two figures a minute apart, not several: a model's references
            # run while the service's stack waits (idle, it takes under 1 % of a core),
            # then the service's own load of that model, so that the machine's slower
            # drifts in speed touch both sides of a ratio alike. M's other side, the
            # service with monitoring off, follows the service's load of that model.
            # Every single-row load comes before any 1,000-row one, as on the stacks with
            # monitoring off: the service's state database holds few served rows yet.
            for payload in self.payloads.values():
                self.single_row_references(payload)
                self.load(
                    f"single/service/{payload.name}",
                    stack.url,
                    service_request(NATIVE, payload, 1),
                )
                if payload.name in MONITORING_OFF_MODELS:
                    self.monitoring_off(payload)
            peak = self.figures[f"single/service/{IRIS}"]
            self.paced(f"paced/service/{IRIS}", stack.url, service_request(NATIVE, iris, 1), peak)
            for protocol in SINGLE_ROW_PROTOCOLS:
                self.load(
                    f"single/{protocol}/{IRIS}", stack.url, service_request(protocol, iris, 1)
                )
            for payload in self.payloads.values():
                self.batch_references(payload)
                for protocol in BATCH_PROTOCOLS:
                    request = service_request(protocol, payload, BATCH_ROWS)
                    self.batch(f"batch/{protocol}/{payload.name}", stack.url, request)
            # A worker recycled by max_requests during the load has touched little yet:
            # let the workers serve every model again before their memory is read (the
            # references' stacks have stopped by now: PSS shares pages among processes).
            for payload in self.payloads.values():
                warm_up(stack.url, service_request(NATIVE, payload, 1))
            self.memory("memory/service", stack)

    def monitoring_off(self, payload: DemoPayload) -> None:
        """M's reference for one model: the service with monitoring off, on its own stack,
        under the same single-row load."""
        name = f"model-service-monitoring-off-{payload.name}"
        with self.stack(name, env=MONITORING_OFF_ENV) as stack:
            request = service_request(NATIVE, payload, 1)
            self.load(f"single/monitoring-off/{payload.name}", stack.url, request)

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

    def memory_stack(self, workers: int, instances: int | None = None) -> None:
        """P4: the service with 1 and with 4 workers, read after the same warm-up traffic;
        with ``instances``, on that many Gunicorn instances rather than the stack's own
        choice."""
        name = memory_key(workers, instances).removeprefix("memory/")
        with self.stack(f"model-{name}", workers=workers, instances=instances) as stack:
            progress(f"warm-up traffic, then memory: {self.settings.describe_workers(workers)}")
            requests = [
                service_request(NATIVE, payload, rows)
                for payload in self.payloads.values()
                for rows in (1, BATCH_ROWS)
            ]
            concurrent_traffic(
                stack.url, requests, MEMORY_WARM_UP_REQUESTS, MEMORY_WARM_UP_CONNECTIONS
            )
            self.memory(memory_key(workers, instances), stack)

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
