"""Load generators: wrk with a Lua script when it is installed, else a built-in closed loop
of keep-alive connections; both can pace to a fixed rate (P5) and report the same
figures (requests, errors, req/s, p50 and p99)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from .settings import LOOPBACK, MAX_REQUESTS_PER_CONNECTION, REQUEST_TIMEOUT_S, BenchError

# A paced load that falls behind its schedule (every connection busy) sends at once, and
# catches up on at most this much of the missed schedule, so a stall gives a short burst.
PACING_MAX_LAG_S = 0.1
JSON_HEADERS = {"Content-Type": "application/json"}
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
