"""What one request costs inside the worker: the WSGI app called in process, no sockets.

`make bench` measures through Nginx and Gunicorn, where wrk, Nginx and the workers share
the cores; this script takes that away and times the Flask app alone, with a prebuilt
WSGI environ, for the hello-world ceiling (loadtests/hello_app.py), the naive handler
on onnxruntime (loadtests/naive_onnx_app.py: the same model call with none of the
service's work), the same handler doing the duties P1 names (loadtests/duties_app.py:
validation, metrics, request log, monitoring) and a single-row request to each demo
model, with the service's defaults and again with metrics and the request log off. The
difference between a model's figure and hello's is what the service adds per request on
top of Flask; the difference from the naive onnxruntime handler is what its own work
costs, and from the handler doing P1's duties, what it costs beyond them.

    .venv/bin/python loadtests/request_cost.py [--requests 3000] [--store DIR] [--evict-mib 6]
                                               [--json PATH]

Figures are wall time per request in one process, its background threads included
(the monitoring writer, the store watcher), as they run in a Gunicorn worker. A tight
loop keeps every cache warm, which a worker under load never has: between two of its
requests Nginx and the load generator run on the same cores. ``--evict-mib N`` writes
to every cache line of an N MiB buffer (more than the L2 cache) before each request
and reports the process's CPU time per request, the eviction's own time taken out:
closer to what a loaded worker spends (on the 2-core VM of docs/performance/last-run.md,
2-3x the tight loop's figures).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script: loadtests.benchlib, as the tests import it

from loadtests.benchlib.onnx_reference import DUTIES_LOG_ENV  # noqa: E402
from loadtests.benchlib.payloads import NAIVE_PATH  # noqa: E402
from loadtests.benchlib.stacks import BARE as BARE_KEY  # noqa: E402
from loadtests.benchlib.stacks import DUTIES as DUTIES_KEY  # noqa: E402
from loadtests.benchlib.stacks import HELLO_PATH, NAIVE_ONNX_ENV  # noqa: E402

WARM_UP_REQUESTS = 200
# Each contender: (who, in --json; its settings, in the table). The service's come with
# the settings of its app.
HELLO = ("hello", "-")
BARE = (BARE_KEY, "naive handler on onnxruntime")
DUTIES = (DUTIES_KEY, "the same doing P1's duties")
VARIANTS = {
    ("service", "defaults"): {},
    ("monitoring-off", "metrics and request log off"): {"metrics": False, "request_log": False},
}

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def environ(path: str, body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_X_REQUEST_ID": "request-cost",
    }


def cache_evictor(mebibytes: int) -> Callable[[], None]:
    """Writes one value in every 64-byte line of a buffer larger than the L2 cache: what
    Nginx and the load generator do to a worker's caches between two of its requests."""
    import numpy as np

    buffer = np.zeros(mebibytes * 1024 * 1024 // 8)

    def evict() -> None:
        buffer[::8] += 1.0

    return evict


def microseconds_per_request(
    app: WsgiApp, path: str, body: bytes, requests: int, evict_mib: int = 0
) -> float:
    """Wall time per request in a tight loop; with ``evict_mib``, the process's CPU time
    per request (its threads included) with the caches evicted before each one."""
    statuses: list[str] = []

    def start_response(status: str, _headers: Any, _exc_info: Any = None) -> None:
        statuses.append(status)

    for _ in range(WARM_UP_REQUESTS):
        b"".join(app(environ(path, body), start_response))
    if not statuses[-1].startswith("200"):
        raise SystemExit(f"{path}: answered {statuses[-1]}")
    if not evict_mib:
        started = time.perf_counter()
        for _ in range(requests):
            b"".join(app(environ(path, body), start_response))
        return (time.perf_counter() - started) / requests * 1e6
    evict = cache_evictor(evict_mib)
    started = time.process_time()
    for _ in range(requests):
        evict()
    evicting = time.process_time() - started
    started = time.process_time()
    for _ in range(requests):
        evict()
        b"".join(app(environ(path, body), start_response))
    return (time.process_time() - started - evicting) / requests * 1e6


def production_versions(store_dir: Path) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """Each model's production version: name, version directory and metadata."""
    from service.store import ModelStore

    store = ModelStore(store_dir)
    for name in store.names():
        version = store.aliases(name)["production"]
        yield name, store.layout.version_dir(name, version), store.metadata(name, version)


def single_row_bodies(store_dir: Path) -> dict[str, bytes]:
    return {
        name: orjson.dumps({"instances": [metadata["golden"]["instances"][0]]})
        for name, _, metadata in production_versions(store_dir)
    }


def naive_onnx_requests(store_dir: Path) -> dict[str, tuple[Path, bytes]]:
    """Per model with a compiled form: its model.onnx, and its golden row as the naive
    handler takes it (a list in feature order)."""
    from service.store.metadata import onnx_backend

    found = {}
    for name, version_dir, metadata in production_versions(store_dir):
        onnx = onnx_backend(metadata)
        if not onnx.get("available"):
            continue
        row = metadata["golden"]["instances"][0]
        if isinstance(row, dict):
            row = [row[feature["name"]] for feature in metadata["input"]["features"]]
        found[name] = (version_dir / onnx["file"], orjson.dumps({"instances": [row]}))
    return found


def reference_module(script: str, onnx_path: Path) -> types.ModuleType:
    """loadtests/SCRIPT (naive_onnx_app.py, duties_app.py) on one model.onnx: a module of
    its own per model, since it loads its model when imported."""
    os.environ[NAIVE_ONNX_ENV] = str(onnx_path)
    spec = importlib.util.spec_from_file_location(
        f"{Path(script).stem}_{onnx_path.parent.parent.name}", REPO_ROOT / "loadtests" / script
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def worker_like_scratch(prefix: str, store_dir: Path | None) -> Iterator[tuple[Path, Path]]:
    """A scratch directory set up as a Gunicorn worker's surroundings: Prometheus's
    multiprocess files, the request log to a file; and a store with the demo models
    (``store_dir``, or trained here). Yields (scratch, store)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        root = Path(scratch)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(root / "prometheus")
        (root / "prometheus").mkdir()
        from service.monitoring import logs

        # The request log goes to a file, as a worker's JSON lines do.
        with open(root / "requests.log", "w") as log_file:
            logs.configure(log_file, logging.INFO)
            if store_dir is None:
                from service.store import ModelStore
                from service.training.demo import train_demo_models

                store_dir = root / "model_store"
                train_demo_models(ModelStore(store_dir), progress=False)
            yield root, store_dir


def run(
    store_dir: Path, requests: int, state_dir: Path, evict_mib: int = 0
) -> list[tuple[str, tuple[str, str], float]]:
    """(request, (who, settings), µs per request) for each."""
    from loadtests.hello_app import create_app as create_hello
    from service import create_app

    bodies = single_row_bodies(store_dir)
    largest = max(bodies.values(), key=len)
    results = [
        (
            "hello (ceiling)",
            HELLO,
            microseconds_per_request(create_hello(), HELLO_PATH, largest, requests, evict_mib),
        )
    ]
    # The reference of P1, the same onnxruntime call with none of the service's work; and
    # its bound, that call with the duties P1 names done in about the least work.
    os.environ[DUTIES_LOG_ENV] = str(state_dir.parent / "duties-requests.log")
    for name, (onnx_path, body) in naive_onnx_requests(store_dir).items():
        for who, script in ((BARE, "naive_onnx_app.py"), (DUTIES, "duties_app.py")):
            app = reference_module(script, onnx_path).app
            micros = microseconds_per_request(app, NAIVE_PATH, body, requests, evict_mib)
            results.append((name, who, micros))
    for variant, overrides in VARIANTS.items():
        app = create_app({"store": str(store_dir), "state_dir": str(state_dir), **overrides})
        try:
            for name, body in bodies.items():
                path = f"/v1/models/{name}/predict"
                micros = microseconds_per_request(app, path, body, requests, evict_mib)
                results.append((name, variant, micros))
        finally:
            # Its writer thread and watcher go before the scratch directory does.
            app.extensions["model_service.monitoring"].stop()
            app.extensions["model_service"].registry.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--store", type=Path, help="a store with the demo models (default: train)")
    parser.add_argument(
        "--evict-mib",
        type=int,
        default=0,
        help="evict the caches before each request with a buffer of this size, and report "
        "CPU time (default 0: a tight loop, wall time)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    with worker_like_scratch("request-cost-", args.store) as (root, store_dir):
        results = run(store_dir, args.requests, root / "state", args.evict_mib)
    if args.json is not None:
        rows = [{"request": n, "who": who, "us": us} for n, (who, _), us in results]
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    hello = results[0][2]
    print(f"{'request':<28} {'settings':<30} {'µs/request':>11} {'+ over hello':>13}")
    for name, (_, settings), micros in results:
        print(f"{name:<28} {settings:<30} {micros:>11.0f} {micros - hello:>13.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
