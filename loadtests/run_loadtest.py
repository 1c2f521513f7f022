"""`make loadtest`: a bounded, headless Locust run against the local stack on 127.0.0.1.

Uses the stack already answering on --port (default 8080, where `make run` puts
it). When nothing answers there, starts one with LocalStack on --store (training
the demo models into it first if it holds none) and stops it afterwards.

    .venv/bin/python loadtests/run_loadtest.py [--users 20] [--run-time 30] [--port 8080]
                                              [--store model_store] [--models a,b]

Reports: loadtests/reports/report.html and loadtests/reports/stats_*.csv.
"""

from __future__ import annotations

import argparse
import csv
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script: loadtests.benchlib, as the tests import it

from loadtests.benchlib.settings import bounded_int  # noqa: E402
from service.localstack import LocalStack, StackError  # noqa: E402
from service.store import ModelStore  # noqa: E402
from service.training.demo import train_demo_models  # noqa: E402

LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
REPORTS_DIR = REPO_ROOT / "loadtests" / "reports"
HTML_REPORT = REPORTS_DIR / "report.html"
CSV_PREFIX = REPORTS_DIR / "stats"
STATS_CSV = REPORTS_DIR / "stats_stats.csv"
LOOPBACK = "127.0.0.1"
MAX_USERS = 200
MAX_RUN_TIME_S = 600
PROBE_TIMEOUT_S = 3.0
STACK_READY_TIMEOUT_S = 120.0
# Locust's own start-up, the catalogue read and writing the reports, on top of --run-time.
LOCUST_GRACE_S = 120


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the Locust load test headless against the local stack on 127.0.0.1.",
    )
    parser.add_argument(
        "--host",
        default=LOOPBACK,
        help=f"Only {LOOPBACK} is accepted: this runner never loads another machine. "
        "For a real deployment run locust -f loadtests/locustfile.py --host URL yourself.",
    )
    parser.add_argument("--port", type=bounded_int(1, 65535), default=8080)
    parser.add_argument(
        "--users",
        type=bounded_int(1, MAX_USERS),
        default=20,
        help=f"Concurrent Locust users (default 20, at most {MAX_USERS}).",
    )
    parser.add_argument(
        "--spawn-rate",
        type=bounded_int(1, MAX_USERS),
        help="Users started per second (default: all at once).",
    )
    parser.add_argument(
        "--run-time",
        type=bounded_int(1, MAX_RUN_TIME_S),
        default=30,
        help=f"Seconds of load (default 30, at most {MAX_RUN_TIME_S}).",
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=Path("model_store"),
        help="Store to serve when this runner starts the stack itself (default model_store).",
    )
    parser.add_argument(
        "--workers", type=bounded_int(1, 64), help="Gunicorn workers of a stack started here."
    )
    parser.add_argument(
        "--runtime-dir",
        type=Path,
        default=REPO_ROOT / ".run" / "loadtest",
        help="Pid files and logs of a stack started here (apart from `make run`'s .run).",
    )
    # Passed on to the locustfile's own options when given.
    parser.add_argument("--models", help="Comma-separated model names (default: all served).")
    parser.add_argument("--batch-size", help="Rows in one batch prediction.")
    parser.add_argument("--batch-share", help="Share of the valid requests that are batches.")
    parser.add_argument("--invalid-share", help="Share of all requests that are invalid.")
    args = parser.parse_args(argv)
    if args.host != LOOPBACK:
        parser.error(f"--host {args.host}: refusing to load anything but {LOOPBACK}")
    return args


def probe(url: str) -> int | None:
    """The HTTP status of GET /readyz, or None when nothing answers on the port."""
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=PROBE_TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def ensure_trained(store_path: Path) -> None:
    store = ModelStore(store_path)
    if store.exists() and store.names():
        return
    print(f"{store_path} holds no models: training the demo models into it", flush=True)
    train_demo_models(store, progress=sys.stderr.isatty())


def locust_command(args: argparse.Namespace, url: str) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate or args.users),
        "--run-time",
        f"{args.run_time}s",
        "--host",
        url,
        "--html",
        str(HTML_REPORT),
        "--csv",
        str(CSV_PREFIX),
    ]
    for option in ("models", "batch_size", "batch_share", "invalid_share"):
        value = getattr(args, option)
        if value is not None:
            command += ["--" + option.replace("_", "-"), str(value)]
    return command


def summary_line(stats_csv: Path) -> str:
    with open(stats_csv, newline="") as handle:
        aggregated = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    requests = int(aggregated["Request Count"])
    failures = int(aggregated["Failure Count"])
    share = 100.0 * failures / requests if requests else 0.0
    return (
        f"summary: {requests} requests, {failures} failures ({share:.2f}%), "
        f"{float(aggregated['Requests/s']):.1f} req/s, "
        f"p50 {aggregated['50%']} ms, p95 {aggregated['95%']} ms, p99 {aggregated['99%']} ms"
    )


def run_locust(args: argparse.Namespace, url: str) -> int:
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    # Stale CSVs from an earlier run must not pass for this run's results.
    for old in REPORTS_DIR.glob("stats_*.csv"):
        old.unlink()
    print(f"load testing {url}: {args.users} users for {args.run_time} s", flush=True)
    try:
        done = subprocess.run(
            locust_command(args, url),
            cwd=REPO_ROOT,
            timeout=args.run_time + LOCUST_GRACE_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        print(f"error: locust ran past {args.run_time + LOCUST_GRACE_S} s and was killed")
        return 1
    print()
    print(f"HTML report: {HTML_REPORT}")
    print(f"CSV stats:   {CSV_PREFIX}_*.csv")
    if STATS_CSV.exists():
        print(summary_line(STATS_CSV))
    else:
        print(f"locust wrote no statistics (exit {done.returncode})")
    return done.returncode


def _exit_on_sigterm(signum, _frame) -> None:
    # Turn SIGTERM into an exception so the finally block stops a stack started here.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    url = f"http://{LOOPBACK}:{args.port}"
    status = probe(url)
    if status == 200:
        print(f"using the stack already running at {url}")
        return run_locust(args, url)
    if status is not None:
        print(
            f"error: {url}/readyz answers {status}: the service there is not ready "
            "(or it is not model-service); fix it or choose another --port",
            file=sys.stderr,
        )
        return 1

    ensure_trained(args.store)
    stack = LocalStack(
        runtime_dir=args.runtime_dir,
        store=args.store,
        host=LOOPBACK,
        port=args.port,
        workers=args.workers,
    )
    print(
        f"nothing answers at {url}: starting a stack on {args.store} (logs in {args.runtime_dir})"
    )
    try:
        # On failure start() stops whatever it had started itself.
        stack.start(ready_timeout=STACK_READY_TIMEOUT_S)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return run_locust(args, url)
    finally:
        stopped = stack.stop()
        if stopped:
            print("stopped " + ", ".join(stopped))


if __name__ == "__main__":
    sys.exit(main())
