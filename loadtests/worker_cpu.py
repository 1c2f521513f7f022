"""What a single-row request costs each process under load, through Nginx: CPU time.

`make bench` gives rates; this gives where the machine's time goes. For the hello-world
ceiling, the naive handler on onnxruntime (the same model call with none of the
service's work) and model-service, each on iris-classifier's single-row body, it starts
the stack of `make bench` (deploy/nginx.conf, deploy/gunicorn.conf.py, 2 sync workers),
loads it with wrk (closed loop), and reads the user and system CPU time of the Gunicorn
processes and of the Nginx processes (``/proc/PID/stat``) before and after the load.
Divided by the requests served, that is what one request costs each side while every
core is busy: more than an in-process timing says, since a worker's caches are cold
when Nginx and wrk have run on its core between two of its requests. Stacks run one
after the other on 127.0.0.1, each stopped by pid.

    .venv/bin/python loadtests/worker_cpu.py [--duration 10] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.payloads import IRIS, NATIVE, Request, naive_request, service_request, warm_up
from benchlib.report import report
from benchlib.rounds import Round
from benchlib.settings import (
    MAX_ROUNDS,
    BenchError,
    BenchSettings,
    add_stack_arguments,
    bounded_int,
    progress,
)
from benchlib.stacks import HELLO_APP, HELLO_PATH, NAIVE_ONNX_APP, NAIVE_ONNX_ENV, demo_workdir

from service.localstack import LocalStack

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# (key, label) of what is measured, in the order the stacks run.
TARGETS = (
    ("hello", "hello (ceiling)"),
    ("naive-onnx", "naive handler on onnxruntime"),
    ("service", "model-service"),
)
SIDES = ("gunicorn", "nginx")


def parse_args(argv: list[str] | None) -> tuple[BenchSettings, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_stack_arguments(parser)
    parser.add_argument(
        "--rounds",
        type=bounded_int(1, MAX_ROUNDS),
        default=1,
        help="Measure every target this many times, one after the other, and report "
        "the median of each figure (default 1).",
    )
    args = parser.parse_args(argv)
    settings = BenchSettings(
        duration_s=args.duration or (1 if args.quick else 10),
        connections=args.connections,
        wrk_threads=min(args.wrk_threads, args.connections),
        workers=2,
        worker_class="sync",
        threads=1,
        rounds=args.rounds,
        repeat_budget_s=0.5,
        load_generator=args.load_generator,
        json_path=args.json,
        peers_venv=None,
    )
    return settings, args.rounds


def _children_of(pids: set[int]) -> set[int]:
    """Every live process below these, these included (a worker started during the load
    is counted from its start; one that exits takes its time with it)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = set(pids)
    grew = True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return found


def cpu_seconds(stack: LocalStack) -> dict[str, dict[int, tuple[float, float]]]:
    """(user, system) CPU seconds of each process of each side of the stack."""
    running = stack.running_pids()
    # Gunicorn's side: every instance's master (the local stack runs two).
    masters = {"gunicorn": set(stack.master_pids().values())}
    masters["nginx"] = {running["nginx"]} if "nginx" in running else set()
    seconds: dict[str, dict[int, tuple[float, float]]] = {}
    for side in SIDES:
        seconds[side] = {}
        if not masters[side]:
            continue
        for pid in _children_of(masters[side]):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name.
            seconds[side][pid] = (int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS)
    return seconds


def cost_per_request(before: dict, after: dict, requests: int) -> dict[str, float]:
    """Microseconds of CPU per request, by side and kind."""
    figures = {}
    for side in SIDES:
        user = system = 0.0
        for pid, (u, s) in after[side].items():
            u0, s0 = before[side].get(pid, (0.0, 0.0))
            user += u - u0
            system += s - s0
        figures[f"{side}_user_us"] = user / requests * 1e6
        figures[f"{side}_system_us"] = system / requests * 1e6
    figures["total_us"] = sum(figures.values())
    return figures


def measure(settings: BenchSettings, rounds: int) -> dict[str, Any]:
    started = time.monotonic()
    with demo_workdir(settings, "model-service-cpu-") as work:
        workdir, store_dir, load_generator = work.path, work.store_dir, work.load_generator
        iris = next(p for p in work.payloads if p.name == IRIS)
        if iris.onnx_path is None:
            raise BenchError(f"{IRIS} has no ONNX form to give the naive handler")
        hello_body = max((p.objects_body(1) for p in work.payloads), key=len)
        stacks = {
            "hello": (
                {"app": HELLO_APP},
                Request("hello", HELLO_PATH, hello_body, 1, answer="none"),
            ),
            "naive-onnx": (
                {"app": NAIVE_ONNX_APP, "env": {NAIVE_ONNX_ENV: str(iris.onnx_path)}},
                naive_request(iris, 1),
            ),
            "service": ({}, service_request(NATIVE, iris, 1)),
        }
        samples: dict[str, list[dict[str, float]]] = {key: [] for key, _ in TARGETS}
        front = "nginx"
        for number in range(1, rounds + 1):
            one = Round(settings, load_generator, workdir, store_dir, [iris], number)
            for key, _ in TARGETS:
                options, request = stacks[key]
                with one.stack(key, **options) as stack:
                    front = one.front
                    warm_up(stack.url, request)
                    progress(f"load {key}, round {number}")
                    before = cpu_seconds(stack)
                    result = load_generator.run(
                        stack.url + request.path, request.body, request.headers
                    )
                    after = cpu_seconds(stack)
                    samples[key].append(
                        {
                            "requests_per_s": result.requests_per_s,
                            "errors": result.errors,
                            **cost_per_request(before, after, max(1, result.requests)),
                        }
                    )
    rows = []
    for key, label in TARGETS:
        runs = samples[key]
        row = {"target": key, "label": label}
        for field in runs[0]:
            row[field] = statistics.median(run[field] for run in runs)
        row["errors"] = sum(run["errors"] for run in runs)
        rows.append(row)
    return {
        "settings": {
            "duration_s": settings.duration_s,
            "connections": settings.connections,
            "workers": settings.workers,
            "rounds": rounds,
            "model": IRIS,
            "front": front,
        },
        "load_generator": {"tool": load_generator.name, "description": load_generator.describe()},
        "elapsed_s": round(time.monotonic() - started, 1),
        "targets": rows,
    }


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    front = "Nginx" if s["front"] == "nginx" else "Gunicorn (no Nginx installed)"
    hello = results["targets"][0]["total_us"]
    lines = [
        f"CPU per request: {s['model']}, one row, POST through {front} -> {s['workers']} sync "
        f"Gunicorn workers; {s['rounds']} round(s), medians; {results['elapsed_s']:.0f} s",
        f"load: {results['load_generator']['description']}",
        "",
        f"{'target':<32}{'req/s':>9}{'Gunicorn user µs':>18}{'sys µs':>8}"
        f"{'Nginx user µs':>15}{'sys µs':>8}{'total µs':>10}{'÷ hello':>9}{'err':>5}",
    ]
    for row in results["targets"]:
        lines.append(
            f"{row['label']:<32}{row['requests_per_s']:>9,.0f}"
            f"{row['gunicorn_user_us']:>18.0f}{row['gunicorn_system_us']:>8.0f}"
            f"{row['nginx_user_us']:>15.0f}{row['nginx_system_us']:>8.0f}"
            f"{row['total_us']:>10.0f}{row['total_us'] / hello:>9.2f}{row['errors']:>5}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings, rounds = parse_args(argv)
    return report(
        "worker cpu",
        lambda: measure(settings, rounds),
        render,
        settings.json_path,
        lambda results: any(row["errors"] for row in results["targets"]),
    )


if __name__ == "__main__":
    sys.exit(main())
