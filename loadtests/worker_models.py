"""`make bench-workers`: iris-classifier under sync and gthread Gunicorn workers, side by side.

For each worker model (default: sync × 2, sync × 4, gthread × 2 with 4 threads,
gthread × 4 with 2 threads) it starts the stack of `make bench` (Nginx in front,
deploy/gunicorn.conf.py, MODEL_SERVICE_WORKER_CLASS / MODEL_SERVICE_THREADS set),
loads it with single-row and then 1,000-row predictions of iris-classifier (wrk,
16 connections, closed loop), reads its memory, stops it, and prints requests/s, p50
and p99 of both loads in one table (``--json`` writes it too). Stacks run one after
the other on 127.0.0.1, each stopped by pid.

    .venv/bin/python loadtests/worker_models.py [--duration 10] [--configs sync:2,gthread:2:4]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

from benchlib.payloads import BATCH_ROWS, IRIS, NATIVE_LISTS, service_request
from benchlib.report import report
from benchlib.rounds import Round
from benchlib.settings import MAX_WORKERS, BenchSettings, add_stack_arguments
from benchlib.stacks import demo_workdir

DEFAULT_CONFIGS = "sync:2,sync:4,gthread:2:4,gthread:4:2"
LOADS = (("1 row", 1), ("1,000 rows", BATCH_ROWS))


@dataclasses.dataclass(frozen=True)
class WorkerModel:
    worker_class: str
    workers: int
    threads: int

    @property
    def label(self) -> str:
        threads = f" × {self.threads} threads" if self.worker_class == "gthread" else ""
        return f"{self.worker_class} × {self.workers}{threads}"


def parse_configs(text: str) -> list[WorkerModel]:
    """ "sync:2,gthread:2:4" -> sync with 2 workers, gthread with 2 workers of 4 threads."""
    models = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        fields = item.split(":")
        if fields[0] not in ("sync", "gthread") or len(fields) not in (2, 3):
            raise argparse.ArgumentTypeError(
                f"expected sync:WORKERS or gthread:WORKERS:THREADS, got {item!r}"
            )
        workers = int(fields[1])
        threads = int(fields[2]) if len(fields) == 3 else (4 if fields[0] == "gthread" else 1)
        if fields[0] == "sync" and threads != 1:
            raise argparse.ArgumentTypeError(f"{item!r}: sync workers have one thread")
        if not (1 <= workers <= MAX_WORKERS and 1 <= threads <= 64):
            raise argparse.ArgumentTypeError(f"{item!r}: workers 1..{MAX_WORKERS}, threads 1..64")
        models.append(WorkerModel(fields[0], workers, threads))
    if not models:
        raise argparse.ArgumentTypeError("no worker model given")
    return models


def parse_args(argv: list[str] | None) -> tuple[BenchSettings, list[WorkerModel]]:
    parser = argparse.ArgumentParser(
        description="iris-classifier's single-row and 1,000-row loads under several Gunicorn "
        "worker models, behind the same Nginx, on 127.0.0.1."
    )
    add_stack_arguments(parser)
    parser.add_argument(
        "--configs",
        type=parse_configs,
        default=parse_configs(DEFAULT_CONFIGS),
        help=f"Comma list of sync:WORKERS and gthread:WORKERS:THREADS (default {DEFAULT_CONFIGS}).",
    )
    args = parser.parse_args(argv)
    duration = args.duration or (1 if args.quick else 10)
    settings = BenchSettings(
        duration_s=duration,
        connections=args.connections,
        wrk_threads=min(args.wrk_threads, args.connections),
        workers=1,
        worker_class="sync",
        threads=1,
        rounds=1,
        repeat_budget_s=0.5,
        load_generator=args.load_generator,
        json_path=args.json,
        peers_venv=None,
    )
    return settings, args.configs


def measure(settings: BenchSettings, models: list[WorkerModel]) -> dict[str, Any]:
    started = time.monotonic()
    with demo_workdir(settings, "model-service-workers-") as work:
        workdir, store_dir, load_generator = work.path, work.store_dir, work.load_generator
        iris = next(p for p in work.payloads if p.name == IRIS)
        rows = []
        for number, model in enumerate(models, start=1):
            these = dataclasses.replace(
                settings,
                workers=model.workers,
                worker_class=model.worker_class,
                threads=model.threads,
            )
            one = Round(these, load_generator, workdir, store_dir, [iris], number)
            row: dict[str, Any] = {**dataclasses.asdict(model), "label": model.label}
            with one.stack(f"{model.worker_class}-{model.workers}x{model.threads}") as stack:
                for name, rows_per_request in LOADS:
                    # The naive handler's body: rows as lists, as in P3.
                    request = service_request(NATIVE_LISTS, iris, rows_per_request)
                    figures = one.load(f"{model.label}/{name}", stack.url, request)
                    row[name] = {
                        **figures,
                        "rows_per_s": figures["requests_per_s"] * rows_per_request,
                    }
                one.memory("memory", stack)
                row["memory"] = one.figures["memory"]
            rows.append(row)
    return {
        "settings": {
            "duration_s": settings.duration_s,
            "connections": settings.connections,
            "model": IRIS,
            "front": one.front,
        },
        "load_generator": {"tool": load_generator.name, "description": load_generator.describe()},
        "elapsed_s": round(time.monotonic() - started, 1),
        "worker_models": rows,
    }


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    front = "Nginx" if s["front"] == "nginx" else "Gunicorn (no Nginx installed)"
    head = f"{'p50 ms':>9}{'p99 ms':>9}{'err':>4}"
    lines = [
        f"worker models: {s['model']}, POST through {front} -> Gunicorn; "
        f"{results['elapsed_s']:.0f} s",
        f"load: {results['load_generator']['description']}",
        "",
        f"{'':<28}" + "".join(f"{' ' + name + ' ':-^33}" for name, _ in LOADS),
        f"{'worker model':<28}{'req/s':>11}{head}{'rows/s':>11}{head}{'PSS MiB':>10}",
    ]
    for row in results["worker_models"]:
        cells = [f"{row['label']:<28}"]
        for name, rows in LOADS:
            load = row[name]
            figure = load["requests_per_s"] if rows == 1 else load["rows_per_s"]
            cells.append(
                f"{figure:>11,.{1 if rows == 1 else 0}f}{load['p50_ms']:>9.2f}"
                f"{load['p99_ms']:>9.2f}{load['errors']:>4}"
            )
        cells.append(f"{row['memory']['total_pss_mib']:>10.1f}")
        lines.append("".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings, models = parse_args(argv)
    return report(
        "worker models",
        lambda: measure(settings, models),
        render,
        settings.json_path,
        lambda results: any(
            row[name]["errors"] for row in results["worker_models"] for name, _ in LOADS
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
