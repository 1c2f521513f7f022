"""The stacks under test and what is read from them: the reference apps (hello-world and
the naive handler) and their settings, memory (PSS from /proc/PID/smaps_rollup),
concurrent warm-up traffic, and the scratch directory with the demo models trained in
it that every benchmark script starts from."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import http.client
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from service.localstack import LocalStack
from service.store import ModelStore
from service.training.demo import train_demo_models

from .loads import LoadGenerator, check_loopback, choose_load_generator
from .onnx_reference import MODEL_PATH_ENV
from .payloads import DemoPayload, Request, check_answer, demo_payloads, send
from .settings import REQUEST_TIMEOUT_S, BenchError, BenchSettings, progress

HELLO_APP = "loadtests.hello_app:app"
HELLO_PATH = "/predict-hello"
PARSE_HELLO_PATH = "/parse-hello"
READ_HELLO_PATH = "/read-hello"
NAIVE_APP = "loadtests.naive_app:app"
NAIVE_MODEL_ENV = "BENCH_NAIVE_MODEL"
NAIVE_ONNX_APP = "loadtests.naive_onnx_app:app"
# The bare onnxruntime handler (loadtests/naive_onnx_app.py) in the figures' keys
# (single/naive-onnx/<model>): what P1 and P3 compare with.
BARE = "naive-onnx"
NAIVE_ONNX_ENV = MODEL_PATH_ENV
# The same handler answering the classifier's probabilities too, as the service does
# (batch/naive-onnx-probabilities/<model>): what P3 native can reach with that answer.
BARE_WITH_PROBABILITIES = "naive-onnx-probabilities"
NAIVE_ONNX_PROBABILITIES_ENV = "BENCH_NAIVE_ONNX_PROBABILITIES"
# The bare handler doing the duties P1 names, validation, metrics, a request log and
# monitoring, in about the least work (loadtests/duties_app.py): P1's bound
# (single/naive-onnx-duties/<model>).
DUTIES = "naive-onnx-duties"
# The same handler on v2 binary bodies (its DUTIES_BINARY_PATH).
DUTIES_BINARY = f"{DUTIES}-v2-binary"
DUTIES_APP = "loadtests.duties_app:app"
MONITORING_OFF_ENV = {"MODEL_SERVICE_METRICS": "false", "MODEL_SERVICE_REQUEST_LOG": "false"}
# Answers name the backend that computed them once the compiled one is there; this
# setting forces the unpickled estimator.
BACKEND_ENV = "MODEL_SERVICE_BACKEND"
STACK_READY_TIMEOUT_S = 120.0


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
