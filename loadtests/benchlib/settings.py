"""What every benchmark script shares: the repository's place, the limits of the options,
the settings of one run and the options that set them, the error a run stops on, and its
progress lines on stderr."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
PEERS_VENV = REPO_ROOT / ".bench-peers"
SEED = 0
REQUEST_TIMEOUT_S = 30.0
# The built-in generator's hard stop, whatever the duration.
MAX_REQUESTS_PER_CONNECTION = 1_000_000
MAX_DURATION_S = 120
MAX_CONNECTIONS = 256
MAX_WORKERS = 16
MAX_ROUNDS = 9


class BenchError(Exception):
    pass


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


def add_wrk_arguments(parser: argparse.ArgumentParser) -> None:
    """wrk's connections and threads, as every load of the benchmarks takes them."""
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


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """The options the bench shares with loadtests/worker_models.py."""
    parser.add_argument(
        "--duration",
        type=bounded_int(1, MAX_DURATION_S),
        help="Seconds of load per target (default 10; 1 with --quick).",
    )
    add_wrk_arguments(parser)
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


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
