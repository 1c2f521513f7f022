"""`make soak`: the service's memory and file descriptors over a long steady load.

Starts the stack `make run` starts (service.localstack.LocalStack: Nginx in front of
Gunicorn with deploy/gunicorn.conf.py, on a free loopback port) over --store, which must
hold the demo models (`modelctl train-demo --if-empty`; `make soak` runs it). The load is a
mix of 1-row and 1,000-row predictions of the three demo models (--batch-share of the
requests are 1,000-row ones), sent by wrk with a Lua script:

1. the highest rate of the mix: wrk's closed loop for --probe-seconds (every connection
   sends its next request as soon as the last is answered);
2. --fraction (70 %) of that rate held for --minutes (30; SOAK_MINUTES in the
   environment), in wrk runs of --interval seconds each: every wrk thread hands out send
   times one interval apart, and a send time missed while every connection was busy is
   dropped, not made up in a burst. After each run (and once before the first) every
   Gunicorn process is sampled: RSS and PSS from /proc/PID/smaps_rollup, open file
   descriptors from /proc/PID/fd (the least of a few reads, so a request's socket in
   flight does not count).

Workers are recycled after max_requests (deploy/gunicorn.conf.py; --max-requests sets
MODEL_SERVICE_MAX_REQUESTS, 0 never recycles): a recycled worker is a new pid that
starts from the master's copy-on-write pages. So the figures after warm-up (the first
--warm-up-minutes, default 5, at most a third of the run) compare the samples of the
first --window-minutes (5) after warm-up with those of the last ones:

- the mean PSS of the workers alive at each sample;
- the PSS of each worker pid alive from the first sample after warm-up to the last
  (none, when every worker was recycled in between: say so rather than compare
  different processes);
- the open file descriptors of the Gunicorn masters, of each worker alive through it
  all, and the most a live worker holds.

PASS when each of those PSS figures grew by at most --max-growth (10 %), no file
descriptor count grew and no request failed; FAIL otherwise (exit status 1). A table
goes to stdout, the samples and figures as JSON to --json.

    .venv/bin/python loadtests/soak.py [--minutes 30] [--interval 60] [--fraction 0.7]
        [--batch-share 0.1] [--workers N] [--max-requests N] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.loads import WRK_PACING_AND_TOTALS, run_wrk
from benchlib.payloads import (
    BATCH_ROWS,
    NATIVE,
    DemoPayload,
    Request,
    demo_payloads,
    service_request,
    warm_up,
)
from benchlib.settings import MAX_WORKERS, BenchError, add_wrk_arguments, bounded_int
from benchlib.stacks import smaps_rollup_kib

from service.errors import ServiceError
from service.localstack import LocalStack, StackError, free_port
from service.store import ModelStore

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
DEFAULT_JSON = REPO_ROOT / "loadtests" / "reports" / "soak.json"
DEFAULT_RUNTIME_DIR = REPO_ROOT / ".run" / "soak"
MINUTES_ENV = "SOAK_MINUTES"
DEFAULT_MINUTES = 30.0
DEFAULT_WARM_UP_MINUTES = 5.0
DEFAULT_WINDOW_MINUTES = 5.0
MAX_GROWTH = 0.10
# /proc/PID/fd is read this many times, this far apart, and the least count kept: a sync
# worker holds one more socket while it answers a request.
FD_READS = 5
FD_READ_GAP_S = 0.05
STACK_READY_TIMEOUT_S = 120.0

# Runs inside each wrk thread. $SOAK_WRK_MANIFEST: the first line is the order requests go
# out in (indices, repeated), every further line the file of one whole HTTP request. Paced
# and summed up as the bench's wrk script is (WRK_PACING_AND_TOTALS, benchlib/loads.py).
WRK_SCRIPT = (
    """\
local manifest = assert(io.open(os.getenv("SOAK_WRK_MANIFEST"), "r"))
local order = {}
for index in manifest:read("*l"):gmatch("%d+") do order[#order + 1] = tonumber(index) end
local raw = {}
for path in manifest:lines() do
  local file = assert(io.open(path, "rb"))
  raw[#raw + 1] = file:read("*a")
  file:close()
end
manifest:close()

local position = 0
request = function()
  position = position % #order + 1
  return raw[order[position]]
end

"""
    + WRK_PACING_AND_TOTALS
)


class SoakError(Exception):
    pass


# --- settings ----------------------------------------------------------------------


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Memory (RSS, PSS) and open file descriptors of every Gunicorn process "
        "of the local stack over a long load at a fixed share of its highest rate.",
    )
    minutes = os.environ.get(MINUTES_ENV)
    parser.add_argument(
        "--minutes",
        type=positive_float,
        default=positive_float(minutes) if minutes else DEFAULT_MINUTES,
        help=f"Minutes of paced load (default {MINUTES_ENV} or {DEFAULT_MINUTES:g}).",
    )
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=60.0,
        help="Seconds between two samples, one wrk run each (default 60).",
    )
    parser.add_argument(
        "--warm-up-minutes",
        type=float,
        help=f"Minutes left out of the growth figures (default {DEFAULT_WARM_UP_MINUTES:g}, "
        "at most a third of --minutes).",
    )
    parser.add_argument(
        "--window-minutes",
        type=positive_float,
        default=DEFAULT_WINDOW_MINUTES,
        help="The growth compares the mean of the samples in the first this many minutes "
        f"after warm-up with the last ones (default {DEFAULT_WINDOW_MINUTES:g}, at most half "
        "of what follows warm-up).",
    )
    parser.add_argument(
        "--fraction",
        type=share,
        default=0.7,
        help="Share of the highest rate held (default 0.7).",
    )
    parser.add_argument(
        "--batch-share",
        type=share,
        default=0.1,
        help=f"Share of the requests that carry {BATCH_ROWS:,} rows (default 0.1).",
    )
    parser.add_argument(
        "--probe-seconds",
        type=bounded_int(1, 300),
        default=15,
        help="Seconds of closed-loop load that measure the highest rate (default 15).",
    )
    add_wrk_arguments(parser)
    parser.add_argument(
        "--max-growth",
        type=share,
        default=MAX_GROWTH,
        help=f"Largest PSS growth after warm-up that passes (default {MAX_GROWTH:g}).",
    )
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument(
        "--workers",
        type=bounded_int(1, MAX_WORKERS),
        help="Gunicorn workers (default: as make run, one per core).",
    )
    parser.add_argument(
        "--max-requests",
        type=bounded_int(0, 10_000_000),
        help="Requests before Gunicorn recycles a worker (MODEL_SERVICE_MAX_REQUESTS; "
        "0: never; default: deploy/gunicorn.conf.py's).",
    )
    parser.add_argument("--runtime-dir", type=Path, default=DEFAULT_RUNTIME_DIR)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    third = args.minutes / 3
    if args.warm_up_minutes is None:
        args.warm_up_minutes = min(DEFAULT_WARM_UP_MINUTES, third)
    elif not 0 <= args.warm_up_minutes < args.minutes:
        parser.error("--warm-up-minutes must be at least 0 and less than --minutes")
    args.wrk_threads = min(args.wrk_threads, args.connections)
    return args


def progress(message: str) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
    print(f"soak {stamp}: {message}", file=sys.stderr, flush=True)


# --- the load ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mix:
    """The requests, and the order wrk sends them in: for each demo model in turn, its
    1-row request (1 - batch_share) / batch_share times, then its 1,000-row one."""

    requests: list[Request]
    order: list[int]

    @classmethod
    def of(cls, payloads: list[DemoPayload], batch_share: float) -> Mix:
        singles_per_batch = max(1, round((1 - batch_share) / batch_share))
        requests: list[Request] = []
        order: list[int] = []
        for payload in payloads:
            single = service_request(NATIVE, payload, 1)
            batch = service_request(NATIVE, payload, BATCH_ROWS)
            requests += [single, batch]
            order += [len(requests) - 2] * singles_per_batch + [len(requests) - 1]
        return cls(requests, order)

    @property
    def batch_share(self) -> float:
        return sum(self.requests[i].rows > 1 for i in self.order) / len(self.order)

    def describe(self) -> str:
        names = ", ".join(sorted({r.label.split()[0] for r in self.requests}))
        return (
            f"1-row and {BATCH_ROWS:,}-row predictions ({100 * self.batch_share:.0f} % of "
            f"requests) of {names}"
        )


def raw_request(request: Request, host: str) -> bytes:
    head = [f"POST {request.path} HTTP/1.1", f"Host: {host}"]
    head += [f"{name}: {value}" for name, value in request.headers.items()]
    head.append(f"Content-Length: {len(request.body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + request.body


@dataclasses.dataclass
class LoadRun:
    requests: int
    status_errors: int
    socket_errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds > 0 else 0.0


class Wrk:
    def __init__(self, workdir: Path, base_url: str, mix: Mix, connections: int, threads: int):
        binary = shutil.which("wrk")
        if binary is None:
            raise SoakError("wrk is not on PATH (apt-get install -y wrk)")
        self.binary = binary
        self.url = base_url
        self.connections = connections
        self.threads = threads
        host = base_url.split("://", 1)[1]
        paths = []
        for index, request in enumerate(mix.requests):
            path = workdir / f"request-{index}.http"
            path.write_bytes(raw_request(request, host))
            paths.append(str(path))
        self.manifest = workdir / "manifest.txt"
        self.manifest.write_text(" ".join(str(i + 1) for i in mix.order) + "\n" + "\n".join(paths))
        self.script = workdir / "soak.lua"
        self.script.write_text(WRK_SCRIPT)

    def run(self, seconds: float, rate: float | None = None) -> LoadRun:
        """A closed loop, or with ``rate`` (req/s over all threads) a paced load."""
        totals = run_wrk(
            self.binary,
            self.script,
            self.url + "/",
            self.threads,
            self.connections,
            max(1, round(seconds)),
            {"SOAK_WRK_MANIFEST": str(self.manifest)},
            rate,
        )
        return LoadRun(
            requests=totals["requests"],
            status_errors=totals["status_errors"],
            socket_errors=totals["socket_errors"],
            seconds=totals["duration_us"] / 1e6,
            p50_ms=totals["p50_us"] / 1000,
            p99_ms=totals["p99_us"] / 1000,
        )


# --- sampling --------------------------------------------------------------------------


def open_fds(pid: int) -> int:
    counts = []
    for attempt in range(FD_READS):
        if attempt:
            time.sleep(FD_READ_GAP_S)
        counts.append(len(os.listdir(f"/proc/{pid}/fd")))
    return min(counts)


def fd_kinds(pid: int) -> dict[str, int]:
    """What the open descriptors are (socket, pipe, anon_inode, file, ...): says what grew."""
    kinds: dict[str, int] = {}
    directory = f"/proc/{pid}/fd"
    for name in os.listdir(directory):
        try:
            target = os.readlink(f"{directory}/{name}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if not target.startswith("/") else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def process_sample(pid: int) -> dict[str, Any] | None:
    """RSS and PSS in KiB and the open descriptors of one process; None once it is gone."""
    try:
        kib = smaps_rollup_kib(pid)
        return {
            "pid": pid,
            "rss_kib": kib["Rss"],
            "pss_kib": kib["Pss"],
            "fds": open_fds(pid),
            "fd_kinds": fd_kinds(pid),
        }
    except (FileNotFoundError, ProcessLookupError, KeyError):
        return None


def take_sample(stack: LocalStack, elapsed_s: float, load: LoadRun | None) -> dict[str, Any]:
    workers = [w for w in map(process_sample, stack.worker_pids()) if w]
    masters = sorted(stack.master_pids().values())
    master_samples = [m for m in map(process_sample, masters) if m]
    return {
        "elapsed_s": round(elapsed_s, 1),
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load": None if load is None else {**dataclasses.asdict(load), "rate": load.requests_per_s},
        "masters": master_samples,
        "workers": sorted(workers, key=lambda w: w["pid"]),
    }


# --- figures -------------------------------------------------------------------------------


def mib(kib: float) -> float:
    return kib / 1024


def growth(before: float, after: float) -> float | None:
    return (after - before) / before if before else None


def mean_pss_mib(sample: dict[str, Any]) -> float:
    return mib(statistics.fmean(w["pss_kib"] for w in sample["workers"]))


def pid_histories(samples: list[dict[str, Any]]) -> dict[int, list[tuple[float, dict]]]:
    histories: dict[int, list[tuple[float, dict]]] = {}
    for sample in samples:
        for worker in sample["workers"]:
            histories.setdefault(worker["pid"], []).append((sample["elapsed_s"], worker))
    return histories


def slope_mib_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB), in MiB an hour: a leak's rate, 0 on a plateau."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if not spread:
        return None
    return 3600 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def judge(
    samples: list[dict[str, Any]],
    warm_up_s: float,
    window_s: float,
    max_growth: float,
    failed: int,
) -> dict[str, Any]:
    """The growth from the first window after warm-up to the last one, and the verdict.

    A worker's PSS moves by several MiB between two samples (its heap is given back to the
    system now and then: service/runtime/heap.py), so each end is the mean of the samples
    in a window (``window_s``, at most half of what follows warm-up) rather than one. File
    descriptors are the fewest of a window's samples: one a thread holds open for a moment
    (a file being read) is not growth, while a leaked one stays in every sample."""
    measured = [s for s in samples if s["workers"]]
    after = [s for s in measured if s["elapsed_s"] >= warm_up_s]
    if len(after) < 2:
        raise SoakError("too few samples after warm-up: run longer or sample more often")
    window_s = min(window_s, (after[-1]["elapsed_s"] - after[0]["elapsed_s"]) / 2)
    first = [s for s in after if s["elapsed_s"] <= after[0]["elapsed_s"] + window_s]
    last = [s for s in after if s["elapsed_s"] >= after[-1]["elapsed_s"] - window_s]
    last = [s for s in last if s not in first] or after[-1:]
    checks = []

    def check(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    def span(window: list[dict[str, Any]]) -> str:
        return minutes_span(window[0]["elapsed_s"], window[-1]["elapsed_s"])

    mean_base = statistics.fmean(mean_pss_mib(s) for s in first)
    mean_end = statistics.fmean(mean_pss_mib(s) for s in last)
    mean_growth = growth(mean_base, mean_end)
    check(
        "mean PSS of live workers",
        mean_growth is not None and mean_growth <= max_growth,
        f"{mean_base:.1f} MiB ({span(first)}) -> {mean_end:.1f} MiB ({span(last)}), "
        f"{100 * (mean_growth or 0):+.1f} %",
    )

    def of_pid(window: list[dict[str, Any]], pid: int, key: str) -> list[int]:
        return [w[key] for s in window for w in s["workers"] if w["pid"] == pid]

    through = []
    lived = {w["pid"] for w in after[0]["workers"]} & {w["pid"] for w in after[-1]["workers"]}
    for pid in sorted(lived):
        pss = [mib(statistics.fmean(of_pid(window, pid, "pss_kib"))) for window in (first, last)]
        rss = [mib(statistics.fmean(of_pid(window, pid, "rss_kib"))) for window in (first, last)]
        fds = [min(of_pid(window, pid, "fds")) for window in (first, last)]
        pss_growth = growth(*pss)
        through.append(
            {
                "pid": pid,
                "pss_mib": pss,
                "rss_mib": rss,
                "pss_growth": pss_growth,
                "rss_growth": growth(*rss),
                "fds": fds,
            }
        )
        check(
            f"PSS of worker {pid} (alive through it all)",
            pss_growth is not None and pss_growth <= max_growth,
            f"{pss[0]:.1f} -> {pss[1]:.1f} MiB, {100 * (pss_growth or 0):+.1f} %",
        )
        check(f"fds of worker {pid}", fds[1] <= fds[0], f"{fds[0]} -> {fds[1]}")
    if not through:
        check(
            "workers alive through it all",
            None,
            "none: every worker was recycled (max_requests) in between, so only the mean "
            "over live workers compares",
        )
    most = [min(max(w["fds"] for w in s["workers"]) for s in window) for window in (first, last)]
    check("most fds of a live worker", most[1] <= most[0], f"{most[0]} -> {most[1]}")
    masters = {m["pid"] for m in after[0]["masters"]} & {m["pid"] for m in after[-1]["masters"]}
    for pid in sorted(masters):
        fds = [
            min(m["fds"] for s in window for m in s["masters"] if m["pid"] == pid)
            for window in (first, last)
        ]
        check(f"fds of master {pid}", fds[1] <= fds[0], f"{fds[0]} -> {fds[1]}")
    check("failed requests", failed == 0, str(failed))
    return {
        "warm_up_s": warm_up_s,
        "first_window_s": [first[0]["elapsed_s"], first[-1]["elapsed_s"]],
        "last_window_s": [last[0]["elapsed_s"], last[-1]["elapsed_s"]],
        "mean_worker_pss_mib": [mean_base, mean_end],
        "mean_worker_pss_growth": mean_growth,
        "mean_worker_pss_slope_mib_per_hour": slope_mib_per_hour(
            [(s["elapsed_s"], mean_pss_mib(s)) for s in after]
        ),
        "total_pss_mib": [
            statistics.fmean(total_pss_mib(s) for s in window) for window in (first, last)
        ],
        "workers_through_window": through,
        "checks": checks,
        "passed": all(c["ok"] is not False for c in checks),
    }


def minutes_span(first_s: float, last_s: float) -> str:
    if first_s == last_s:
        return f"{first_s / 60:.1f} min"
    return f"{first_s / 60:.1f}-{last_s / 60:.1f} min"


def total_pss_mib(sample: dict[str, Any]) -> float:
    return mib(sum(p["pss_kib"] for p in sample["masters"] + sample["workers"]))


# --- the run -------------------------------------------------------------------------------


def check_mix(base_url: str, mix: Mix) -> None:
    """Each request once, its answer checked, before any load: a broken request must not
    pass for a fast one."""
    for request in mix.requests:
        warm_up(base_url, request, count=2)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    store = ModelStore(args.store)
    try:
        payloads = demo_payloads(store)
    except (ServiceError, KeyError) as exc:
        raise SoakError(
            f"{args.store} does not hold the demo models with a production alias ({exc}); "
            f"run: modelctl train-demo --if-empty --store {args.store}"
        ) from exc
    mix = Mix.of(payloads, args.batch_share)
    extra_env = {}
    if args.max_requests is not None:
        extra_env["MODEL_SERVICE_MAX_REQUESTS"] = str(args.max_requests)
    stack = LocalStack(
        runtime_dir=args.runtime_dir,
        store=args.store,
        host=LOOPBACK,
        port=free_port(),
        workers=args.workers,
        extra_env=extra_env,
    )
    workdir = args.runtime_dir / "wrk"
    progress(f"starting the stack on {stack.url} (logs in {args.runtime_dir})")
    started_at = dt.datetime.now(dt.UTC)
    stack.start(ready_timeout=STACK_READY_TIMEOUT_S)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        wrk = Wrk(workdir, stack.url, mix, args.connections, args.wrk_threads)
        check_mix(stack.url, mix)
        progress(f"highest rate: closed loop for {args.probe_seconds} s")
        peak = wrk.run(args.probe_seconds)
        if peak.requests_per_s <= 0:
            raise SoakError("no request of the closed loop succeeded")
        rate = args.fraction * peak.requests_per_s
        progress(
            f"highest rate {peak.requests_per_s:.1f} req/s ({peak.errors} errors); holding "
            f"{rate:.1f} req/s for {args.minutes:g} min, a sample every {args.interval:g} s"
        )
        samples = [take_sample(stack, 0.0, None)]
        report_sample(samples[-1])
        total_s = args.minutes * 60
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < total_s - 1:
            load = wrk.run(min(args.interval, total_s - elapsed), rate)
            samples.append(take_sample(stack, time.monotonic() - began, load))
            report_sample(samples[-1])
    finally:
        stopped = stack.stop()
        progress("stopped " + (", ".join(stopped) or "nothing"))
    loads = [s["load"] for s in samples if s["load"]]
    sent = sum(load["requests"] for load in loads)
    failed = sum(load["status_errors"] + load["socket_errors"] for load in loads)
    seconds = sum(load["seconds"] for load in loads)
    figures = judge(
        samples, args.warm_up_minutes * 60, args.window_minutes * 60, args.max_growth, failed
    )
    initial = {w["pid"] for w in samples[0]["workers"]}
    seen = set(pid_histories(samples))
    return {
        "settings": {
            "minutes": args.minutes,
            "interval_s": args.interval,
            "warm_up_minutes": args.warm_up_minutes,
            "window_minutes": args.window_minutes,
            "fraction": args.fraction,
            "batch_share": mix.batch_share,
            "batch_rows": BATCH_ROWS,
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "workers": args.workers or os.cpu_count(),
            "max_requests": args.max_requests,
            "max_growth": args.max_growth,
            "cpus": os.cpu_count(),
            "front": "nginx" if stack.use_nginx else "gunicorn",
            "mix": mix.describe(),
        },
        "started": started_at.isoformat(timespec="seconds"),
        "peak": {**dataclasses.asdict(peak), "rate": peak.requests_per_s},
        "target_rate": rate,
        "load": {
            "requests": sent,
            "failed": failed,
            "seconds": seconds,
            "rate": (sent - failed) / seconds if seconds else 0.0,
        },
        "worker_pids_seen": len(seen),
        "workers_recycled": len(seen - initial),
        "samples": samples,
        "figures": figures,
    }


def report_sample(sample: dict[str, Any]) -> None:
    workers = ", ".join(
        f"{w['pid']}: PSS {mib(w['pss_kib']):.1f} RSS {mib(w['rss_kib']):.1f} MiB {w['fds']} fds"
        for w in sample["workers"]
    )
    load = sample["load"]
    rate = "" if load is None else f"{load['rate']:.1f} req/s, {load['status_errors']} + "
    errors = "" if load is None else f"{load['socket_errors']} errors; "
    progress(f"{sample['elapsed_s'] / 60:5.1f} min: {rate}{errors}{workers}")


# --- output --------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    s, peak, load, figures = (
        results["settings"],
        results["peak"],
        results["load"],
        results["figures"],
    )
    front = "Nginx -> Gunicorn" if s["front"] == "nginx" else "Gunicorn (no Nginx installed)"
    recycle = "deploy/gunicorn.conf.py's" if s["max_requests"] is None else s["max_requests"]
    lines = [
        f"soak: {s['minutes']:g} min, {s['workers']} workers through {front}, "
        f"max_requests {recycle}; {s['cpus']} CPUs",
        f"load: {s['mix']}, wrk {s['connections']} connections / {s['wrk_threads']} threads",
        f"highest rate (closed loop, {peak['seconds']:.0f} s): {peak['rate']:.1f} req/s "
        f"({peak['requests']:,} requests, {peak['status_errors'] + peak['socket_errors']} "
        f"failed, p50 {peak['p50_ms']:.1f} ms, p99 {peak['p99_ms']:.1f} ms)",
        f"held: {load['rate']:.1f} req/s for a target of {results['target_rate']:.1f} "
        f"({100 * s['fraction']:.0f} %); {load['requests']:,} requests sent, "
        f"{load['failed']:,} failed",
        "",
        f"{'min':>6}{'req/s':>8}{'failed':>7}{'p99 ms':>8}{'workers':>8}"
        f"{'mean PSS':>10}{'mean RSS':>10}{'total PSS':>11}{'worker fds':>12}{'master fds':>12}",
    ]
    for sample in results["samples"]:
        workers, masters, run = sample["workers"], sample["masters"], sample["load"]
        if not workers:
            continue
        fds = [w["fds"] for w in workers]
        lines.append(
            f"{sample['elapsed_s'] / 60:>6.1f}"
            + (
                f"{run['rate']:>8.1f}{run['status_errors'] + run['socket_errors']:>7}"
                f"{run['p99_ms']:>8.1f}"
                if run
                else f"{'-':>8}{'-':>7}{'-':>8}"
            )
            + f"{len(workers):>8}{mean_pss_mib(sample):>10.1f}"
            f"{mib(statistics.fmean(w['rss_kib'] for w in workers)):>10.1f}"
            f"{total_pss_mib(sample):>11.1f}"
            f"{f'{min(fds)}..{max(fds)}':>12}"
            f"{','.join(str(m['fds']) for m in masters):>12}"
        )
    lines += [
        "",
        f"per worker pid (MiB; {results['workers_recycled']} of "
        f"{results['worker_pids_seen']} pids were recycled ones):",
        f"{'pid':>8}{'seen min':>14}{'PSS first':>11}{'PSS last':>10}{'growth':>9}"
        f"{'RSS first':>11}{'RSS last':>10}{'fds':>10}",
    ]
    for pid, history in pid_histories(results["samples"]).items():
        (t0, first), (t1, last) = history[0], history[-1]
        change = growth(first["pss_kib"], last["pss_kib"])
        lines.append(
            f"{pid:>8}{f'{t0 / 60:.1f}..{t1 / 60:.1f}':>14}{mib(first['pss_kib']):>11.1f}"
            f"{mib(last['pss_kib']):>10.1f}{100 * (change or 0):>+8.1f}%"
            f"{mib(first['rss_kib']):>11.1f}{mib(last['rss_kib']):>10.1f}"
            f"{str(first['fds']) + '->' + str(last['fds']):>10}"
        )
    slope = figures["mean_worker_pss_slope_mib_per_hour"]
    total = figures["total_pss_mib"]
    lines += [
        "",
        f"after warm-up ({figures['warm_up_s'] / 60:.1f} min): the mean of the samples at "
        f"{minutes_span(*figures['first_window_s'])} against those at "
        f"{minutes_span(*figures['last_window_s'])}; total PSS {total[0]:.1f} -> "
        f"{total[1]:.1f} MiB"
        + ("" if slope is None else f"; mean worker PSS trend {slope:+.1f} MiB/hour"),
    ]
    for entry in figures["checks"]:
        mark = {True: "ok", False: "FAIL", None: "--"}[entry["ok"]]
        lines.append(f"  {mark:<5}{entry['check']}: {entry['detail']}")
    lines.append(
        f"{'PASS' if figures['passed'] else 'FAIL'}: PSS growth <= "
        f"{100 * s['max_growth']:g} % after warm-up, no fd growth, no failed request"
    )
    return "\n".join(lines)


def _exit_on_sigterm(signum, _frame) -> None:
    # Turn SIGTERM into an exception so the finally block stops the stack.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        results = soak(args)
    except (SoakError, BenchError, StackError) as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 1
    print(render(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"JSON: {args.json}")
    return 0 if results["figures"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
