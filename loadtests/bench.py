"""`make bench`: the performance goals of model-service, as ratios measured in one run.

Every stack runs on 127.0.0.1 behind the same Nginx and Gunicorn settings (worker
count, worker class and threads from the command line), loaded one after the other so
they never compete for the CPUs, and is stopped by pid. The service's stack waits idle
while each model's reference handlers are loaded, then serves that model's load (single
rows for every model first, then 1,000 rows): a goal's two figures are a minute apart.
One table comes out, in sections, and the same rows as JSON with ``--json``:

Goals (each a ratio of two figures measured in this run, with its target):
  P1  single-row predictions of each demo model, req/s ÷ the bare onnxruntime handler
      (loadtests/naive_onnx_app.py: orjson in, one run, orjson out) on the same
      model.onnx: ≥ 0.90, monitoring on (defaults); its bound, the same handler doing
      P1's duties at their least (loadtests/duties_app.py), loaded in the same round
  P3  1,000-row requests, rows/s ÷ the same bare handler's on the same rows, per demo
      model: ≥ 0.85 with the native JSON API, ≥ 1.0 with the Open Inference Protocol v2
      binary tensor extension
  P4  total PSS (Gunicorn master + workers, /proc/PID/smaps_rollup) of the stack with
      4 workers ÷ the same stack with 1 worker, after the same warm-up traffic: ≤ 1.3
  P5  iris-classifier paced at 80 % of its P1 rate: its p99 ÷ p50, over hello's own
      p99 ÷ p50 paced at 80 % of hello's rate: ≤ 1.2 (achieved rate shown)
  M   monitoring (Prometheus metrics + request log) on ÷ off, req/s: ≥ 0.90
  MLflow  single-row req/s ÷ MLflow's scoring server's, when installed: ≥ 3

Details, each next to the naive handler (loadtests/naive_app.py) where it has one:
single-row loads (hello, naive, the service per model, per protocol, with monitoring
off, with the pickle backend forced when the answers name a backend), P5's paced load
for naive and service, 1,000-row requests per protocol, in-process per-call timings,
a 1,000-row request stage by stage (loadtests/request_breakdown.py), memory, and
MLflow's own scoring server when `make bench-peers` has installed it.

Single-row figures come from wrk (a Lua script POSTs the body; P5 adds a per-thread
pacing ``delay()``), or from a built-in generator when wrk is not installed. 1,000-row
figures come from the same closed loop (every worker busy), over 3 s loads. With
``--rounds N`` every stack runs N times and each figure is the median; each goal's row
also gives its ratio in every round.

    .venv/bin/python loadtests/bench.py [--duration 10] [--rounds 1] [--workers 2]
        [--worker-class sync|gthread] [--threads 4] [--json PATH] [--quick] [--no-peers]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.peers import PEERS_HINT, mlflow_version
from benchlib.report import render, report
from benchlib.rounds import Round
from benchlib.rows import detail_rows, goal_rows, median_figures, with_round_ratios
from benchlib.settings import (
    MAX_ROUNDS,
    MAX_WORKERS,
    PEERS_VENV,
    BenchSettings,
    add_stack_arguments,
    bounded_int,
    progress,
)
from benchlib.stacks import demo_workdir


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
        "goals": [
            row.as_json()
            for row in with_round_ratios(
                goal_rows(figures, names), [goal_rows(each, names) for each in rounds]
            )
        ],
        "rows": [
            row.as_json() for row in detail_rows(figures, names, settings, peer_version, peer_note)
        ],
    }


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
