"""What shadow traffic costs the primary: iris-classifier's p99 with and without a shadow.

    .venv/bin/python loadtests/shadow_cost.py [--duration 8] [--rounds 4] [--share 0.2]
        [--row-seconds 0.05] [--busy] [--workers 2] [--json PATH]

Trains the demo models into a scratch store, publishes iris-classifier version 2: the same
estimator behind a wrapper that sleeps ``--row-seconds`` per row before predicting
(tests/integration/fault_models.py ``SlowRows``: a candidate far slower than the primary;
``BusyRows`` with ``--busy``: one that computes those seconds in Python),
and starts one stack (Nginx -> Gunicorn, sync workers). Then, ``--rounds`` times, it loads
single-row predictions of ``iris-classifier`` (no version: the experiment routes them)
under two experiments that differ only in the shadow:

  without  production=100
  with     production=100, shadow version 2 at ``--share``

each paced (wrk) at ``PACED_FRACTION`` of the rate a closed loop reached without the
shadow (the two in the opposite order every other round). It reports each load's p99,
and the median over the rounds of each round's p99 with ÷ without (target ≤ 1.05): a
ratio of neighbours in time, so a drift of the machine's speed weighs on both alike. The
shadow runs and drops /metrics counted meanwhile show the candidate ran; drops are how a
candidate slower than the traffic is kept off the primary.

Each load also reports the worker restarts (``max_requests``) that fell inside it: a
restart leaves its instance a worker short for tens of milliseconds, which the load's p99
shows. The ratio compares the shadow's cost only when both arms saw as many. Under the
service's own max_requests (20,000 ± 10 %) a worker restarts about once per round of three
8 s loads, in the same place each round, so one arm can take every restart:
``--max-requests 0`` (never) or one small enough for several in every load (``make
bench-shadow`` runs 2,000) keeps the arms even, and the report says when they are not.
"""

from __future__ import annotations

import argparse
import pickle
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchlib.payloads import IRIS, NATIVE, Request, service_request
from benchlib.report import report
from benchlib.rounds import PACED_FRACTION, Round
from benchlib.settings import (
    MAX_ROUNDS,
    MAX_WORKERS,
    REPO_ROOT,
    BenchError,
    BenchSettings,
    add_stack_arguments,
    bounded_int,
    progress,
)
from benchlib.stacks import demo_workdir

sys.path.insert(0, str(REPO_ROOT))  # the candidate's class, which the workers unpickle

from service.store import ModelStore
from service.store.experiments import Shadow, Variant
from tests.integration.fault_models import BusyRows, SlowRows

TARGET = 1.05
PEAK_SECONDS = 5
APPLY_TIMEOUT_S = 30.0
# A full queue (service.runtime.shadow.QUEUE_SIZE) of 50 ms runs takes 5 s to empty.
SETTLE_TIMEOUT_S = 30.0
SETTLED_POLLS = 3
START_TIMEOUT_S = 120.0
EXPERIMENT_HEADER = "X-Experiment-Id"
COUNTERS = ("model_service_shadow_runs_total", "model_service_shadow_dropped_total")
# What a sync worker logs when it reaches max_requests and is about to be replaced.
RESTART_LINE = b"Autorestarting worker"
UNEVEN = " — NOT EVEN: the p99 ratio weighs the restarts as well as the shadow"


def parse_args(argv: list[str] | None) -> tuple[BenchSettings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_stack_arguments(parser)
    parser.add_argument("--rounds", type=bounded_int(1, MAX_ROUNDS), default=4)
    parser.add_argument("--workers", type=bounded_int(1, MAX_WORKERS), default=2)
    parser.add_argument("--share", type=float, default=0.2, help="of requests shadowed")
    parser.add_argument("--row-seconds", type=float, default=0.05, help="the candidate's cost")
    parser.add_argument(
        "--max-requests",
        type=int,
        default=None,
        help="Gunicorn's max_requests for the stack (MODEL_SERVICE_MAX_REQUESTS; 0: workers "
        "never restart). Default: the service's own (20,000 ± 10 %%), under which each "
        "worker restarts about once per round, so the arms rarely see as many restarts.",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="Each round also loads a second time without the shadow (the two loads "
        "without on either side of the one with): their p99 ratio is the measurement's "
        "own noise, printed beside the shadow's.",
    )
    parser.add_argument(
        "--busy",
        action="store_true",
        help="The candidate computes its row seconds (Python, holding the GIL) instead of "
        "waiting them out.",
    )
    args = parser.parse_args(argv)
    if not 0 < args.share <= 1:
        parser.error("--share: in (0, 1]")
    duration = args.duration or (1 if args.quick else 8)
    settings = BenchSettings(
        duration_s=duration,
        connections=args.connections,
        wrk_threads=min(args.wrk_threads, args.connections),
        workers=args.workers,
        worker_class="sync",
        threads=1,
        rounds=args.rounds,
        repeat_budget_s=0.5,
        load_generator=args.load_generator,
        json_path=args.json,
        peers_venv=None,
    )
    return settings, args


def counters(base_url: str, candidate: str) -> dict[str, float]:
    """The shadow counters of iris-classifier's candidate in /metrics, summed."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{([^}]*)\} (\S+)", line)
        if match is None or match[1] not in found:
            continue
        if f'model="{IRIS}"' in match[2] and f'candidate="{candidate}"' in match[2]:
            found[match[1]] += float(match[3])
    return found


class RestartCounter:
    """Worker restarts (max_requests) in a stack's Gunicorn log since the last call: a
    restart leaves its instance a worker short for tens of milliseconds, which a load's p99
    shows, so each load reports how many fell inside it."""

    def __init__(self, log: Path):
        self.log = log
        self.offset = self._size()

    def _size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def since_last(self) -> int:
        with open(self.log, "rb") as stream:
            stream.seek(self.offset)
            text = stream.read()
        # Up to the last whole line: the rest is counted next time.
        text = text[: text.rfind(b"\n") + 1]
        self.offset += len(text)
        return text.count(RESTART_LINE)


def wait_applied(base_url: str, request: Request, experiment_id: str) -> None:
    """Until a run of answers all name the experiment: every worker has applied it."""
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        seen = set()
        for _ in range(8):
            call = urllib.request.Request(
                base_url + request.path, data=request.body, headers=request.headers
            )
            with urllib.request.urlopen(call, timeout=10) as answer:
                seen.add(answer.headers.get(EXPERIMENT_HEADER))
        if seen == {experiment_id}:
            return
        time.sleep(0.2)
    raise BenchError(f"experiment {experiment_id} not applied within {APPLY_TIMEOUT_S} s")


def wait_running(base_url: str, request: Request, candidate: str, runs: int) -> None:
    """Until the candidate has run ``runs`` times: the shadow process's candidate has
    started (at the lowest CPU priority, it may take a while) before the load is timed."""
    deadline = time.monotonic() + START_TIMEOUT_S
    first = counters(base_url, candidate)[COUNTERS[0]]
    while counters(base_url, candidate)[COUNTERS[0]] < first + runs:
        if time.monotonic() > deadline:
            raise BenchError(f"the shadow did not run {runs} times in {START_TIMEOUT_S} s")
        for _ in range(20):
            call = urllib.request.Request(
                base_url + request.path, data=request.body, headers=request.headers
            )
            with urllib.request.urlopen(call, timeout=10) as answer:
                answer.read()
        time.sleep(0.2)


def wait_settled(base_url: str, request: Request, candidate: str) -> None:
    """Until the shadow process has answered all the workers' work: the next load starts
    as the first did. A worker reads the answers as its requests pass,
    so requests (to the alias: never shadowed) go on until the runs stop growing for
    ``SETTLED_POLLS`` polls in a row (a process at niceness 19 may pause while the machine
    is busy)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    path = request.path.replace(f"/{IRIS}/", f"/{IRIS}@production/")
    last, unchanged = None, 0
    while time.monotonic() < deadline:
        for _ in range(20):
            call = urllib.request.Request(
                base_url + path, data=request.body, headers=request.headers
            )
            with urllib.request.urlopen(call, timeout=10) as answer:
                answer.read()
        runs = counters(base_url, candidate)[COUNTERS[0]]
        unchanged = unchanged + 1 if runs == last else 0
        if unchanged >= SETTLED_POLLS:
            return
        last = runs
        time.sleep(1.0)


def measure(settings: BenchSettings, args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    with demo_workdir(settings, "model-service-shadow-") as work:
        store = ModelStore(work.store_dir)
        meta = store.metadata(IRIS, 1)
        kind = BusyRows if args.busy else SlowRows
        meta["description"] = f"iris-classifier {args.row_seconds * 1000:g} ms a row slower"
        for key in ("golden", "backends"):
            meta.pop(key, None)
        base = store.load_artifact(IRIS, 1).estimator
        candidate = str(store.publish(IRIS, pickle.dumps(kind(base, args.row_seconds)), meta))
        iris = next(p for p in work.payloads if p.name == IRIS)
        request = service_request(NATIVE, iris, 1)
        one = Round(settings, work.load_generator, work.path, work.store_dir, [iris], 1)
        conditions = {
            "without": None,
            "with": Shadow(candidate, args.share),
        }
        if args.control:
            conditions["again"] = None
        loads: dict[str, list[dict[str, Any]]] = {name: [] for name in conditions}
        env = {"PYTHONPATH": str(REPO_ROOT)}
        if args.max_requests is not None:
            env["MODEL_SERVICE_MAX_REQUESTS"] = str(args.max_requests)
        with one.stack("shadow", env=env) as stack:
            restarts = RestartCounter(stack.runtime_dir / "gunicorn.log")
            peak = None
            for number in range(1, settings.rounds + 1):
                # Alternated, so a drift of the machine's speed weighs on both alike.
                order = list(conditions.items())
                for name, shadow in order if number % 2 else order[::-1]:
                    experiment = store.start_experiment(
                        IRIS, [Variant("production", 100)], shadow=shadow
                    )
                    try:
                        wait_applied(stack.url, request, experiment.id)
                        if shadow is not None:
                            wait_running(stack.url, request, candidate, 4 * settings.workers)
                        if peak is None:
                            peak = one.load("peak", stack.url, request)
                            progress(f"closed loop: {peak['requests_per_s']:.0f} req/s")
                        before = counters(stack.url, candidate)
                        restarts.since_last()
                        rate = PACED_FRACTION * peak["requests_per_s"]
                        figures = one.load(f"{name}/{number}", stack.url, request, rate=rate)
                        after = counters(stack.url, candidate)
                        figures["shadow_runs"] = after[COUNTERS[0]] - before[COUNTERS[0]]
                        figures["shadow_dropped"] = after[COUNTERS[1]] - before[COUNTERS[1]]
                        figures["restarts"] = restarts.since_last()
                        loads[name].append(figures)
                    finally:
                        store.stop_experiment(IRIS)
                    wait_settled(stack.url, request, candidate)
    p99 = {name: statistics.median(f["p99_ms"] for f in runs) for name, runs in loads.items()}
    ratios = [
        w["p99_ms"] / wo["p99_ms"]
        for w, wo in zip(loads["with"], loads["without"], strict=True)
        if wo["p99_ms"] > 0
    ]
    controls = [
        again["p99_ms"] / wo["p99_ms"]
        for again, wo in zip(loads.get("again", []), loads["without"], strict=False)
        if wo["p99_ms"] > 0
    ]
    return {
        "settings": {
            "model": IRIS,
            "workers": settings.workers,
            "duration_s": settings.duration_s,
            "rounds": settings.rounds,
            "share": args.share,
            "row_seconds": args.row_seconds,
            "candidate": "computes" if args.busy else "waits",
            "paced_fraction": PACED_FRACTION,
            "max_requests": args.max_requests,
        },
        "load_generator": {
            "tool": work.load_generator.name,
            "description": work.load_generator.describe(),
        },
        "peak": peak,
        "loads": loads,
        "p99_ms": p99,
        "round_ratios": ratios,
        "ratio": statistics.median(ratios) if ratios else None,
        "control_ratios": controls,
        "control_ratio": statistics.median(controls) if controls else None,
        "target": TARGET,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def restarts_even(with_shadow: int, without: int) -> bool:
    """Whether the two arms saw about as many worker restarts (within a quarter, or one)."""
    return abs(with_shadow - without) <= max(1, 0.25 * max(with_shadow, without))


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"shadow cost: {s['model']}, {s['workers']} sync workers, single rows paced at "
        f"{s['paced_fraction']:.0%} of {results['peak']['requests_per_s']:.0f} req/s, "
        f"{s['rounds']} rounds of {s['duration_s']} s; {results['elapsed_s']:.0f} s; "
        + (
            "workers restart at the service's max_requests"
            if s["max_requests"] is None
            else f"max_requests {s['max_requests']}"
            + (" (workers never restart)" if s["max_requests"] == 0 else "")
        ),
        f"load: {results['load_generator']['description']}",
        "",
        f"{'round':<7}{'shadow':<9}{'req/s':>7}{'p50 ms':>9}{'p99 ms':>9}{'err':>5}"
        f"{'shadow runs':>13}{'dropped':>9}{'restarts':>10}{'p99 ratio':>11}",
    ]
    names = [name for name in ("without", "with", "again") if results["loads"].get(name)]
    ratios = {"with": results["round_ratios"], "again": results.get("control_ratios", [])}
    rows = zip(*(results["loads"][n] for n in names), strict=True)
    for number, loads in enumerate(rows, start=1):
        for name, figures in zip(names, loads, strict=True):
            ratio = ratios[name][number - 1] if name in ratios else None
            lines.append(
                f"{number if name == 'without' else '':<7}{name:<9}"
                f"{figures['requests_per_s']:>7.0f}{figures['p50_ms']:>9.2f}"
                f"{figures['p99_ms']:>9.2f}{figures['errors']:>5}"
                f"{figures['shadow_runs']:>13.0f}{figures['shadow_dropped']:>9.0f}"
                f"{figures['restarts']:>10}" + (f"{ratio:>11.3f}" if ratio is not None else "")
            )
    ratio = results["ratio"]
    lines += [
        "",
        f"S   shadow ({s['candidate']} {s['row_seconds'] * 1000:g} ms a row, share "
        f"{s['share']:g}): primary p99 "
        f"with ÷ without {ratio:.3f}, median of the rounds (target ≤ {results['target']:.2f}; "
        f"median p99 {results['p99_ms']['with']:.2f} vs {results['p99_ms']['without']:.2f} ms)",
    ]
    restarts = {name: sum(f["restarts"] for f in results["loads"][name]) for name in names}
    lines.append(
        "    worker restarts during the loads: "
        + ", ".join(f"{name} {count}" for name, count in restarts.items())
        + ("" if restarts_even(restarts["with"], restarts["without"]) else UNEVEN)
    )
    if results.get("control_ratio") is not None:
        lines.append(
            f"    control: p99 again without ÷ without {results['control_ratio']:.3f}, median "
            f"of the rounds (rounds {', '.join(f'{r:.3f}' for r in results['control_ratios'])}):"
            " what the measurement itself moves"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    return report(
        "shadow cost",
        lambda: measure(settings, args),
        render,
        settings.json_path,
        lambda results: any(f["errors"] for runs in results["loads"].values() for f in runs),
    )


if __name__ == "__main__":
    sys.exit(main())
