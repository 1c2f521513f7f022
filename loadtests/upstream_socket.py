"""What the way from Nginx to Gunicorn costs: hello's single-row rate over TCP and over a
unix socket, on the same local stack otherwise.

Gunicorn's sync workers close their connection after every answer, so Nginx opens one per
request; `modelctl serve` has Nginx reach each Gunicorn instance through a unix socket
(service/localstack.py), and `make bench` keeps its baselines on TCP, as a naive
deployment would run them. This measures what that choice is worth by itself: the hello
app (loadtests/hello_app.py, no model work) behind the local stack, with Nginx reaching
Gunicorn over TCP, then over the unix sockets, in turn, each load a closed loop under wrk.

    .venv/bin/python loadtests/upstream_socket.py [--rounds 5] [--duration 8] [--json PATH]

Loads on this machine move by ±10 % from one to the next; five rounds of both, in turn,
are what it takes for the difference to show in every round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from loadtests.benchlib.loads import choose_load_generator  # noqa: E402
from loadtests.benchlib.settings import LOOPBACK, progress  # noqa: E402
from loadtests.benchlib.stacks import HELLO_APP, HELLO_PATH  # noqa: E402
from service.localstack import LocalStack, free_port  # noqa: E402

# hello's body: one iris row, as the bench sends a model its single-row requests.
BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
WAYS = {"tcp": False, "unix": True}


def check_upstreams(stack: LocalStack, way: str) -> None:
    """Every request of the load went the way it was meant to: Nginx's access log (written
    out when Nginx stopped) names the upstream of each."""
    log = stack.runtime_dir / "nginx-access.log"
    upstreams = {
        line.split("upstream=", 1)[1].split()[0]
        for line in log.read_text().splitlines()
        if "upstream=" in line
    } - {"-"}  # answered by Nginx itself
    expected = "unix:" if way == "unix" else f"{LOOPBACK}:"
    if not upstreams or not all(upstream.startswith(expected) for upstream in upstreams):
        raise SystemExit(f"the {way} load went to {sorted(upstreams)}")


def measure(workdir: Path, rounds: int, duration_s: int) -> dict[str, list[float]]:
    loads = choose_load_generator("wrk", workdir, duration_s, connections=16, wrk_threads=2)
    rates: dict[str, list[float]] = {way: [] for way in WAYS}
    headers = {"Content-Type": "application/json"}
    for number in range(1, rounds + 1):
        for way, unix_sockets in WAYS.items():
            stack = LocalStack(
                runtime_dir=workdir / f"{way}-{number}",
                store=workdir / "store",
                host=LOOPBACK,
                port=free_port(),
                workers=2,
                app=HELLO_APP,
                unix_sockets=unix_sockets,
                extra_env={"PYTHONPATH": str(REPO_ROOT)},
            )
            if not stack.use_nginx:
                raise SystemExit("nginx is not installed: there is no upstream to compare")
            stack.start()
            try:
                result = loads.run(stack.url + HELLO_PATH, BODY, headers)
            finally:
                stack.stop()
            if result.errors:
                raise SystemExit(f"{result.errors} requests failed over {way}")
            check_upstreams(stack, way)
            rates[way].append(result.requests_per_s)
            progress(f"round {number}, {way}: {result.requests_per_s:,.0f} req/s")
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8, help="seconds per load")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="upstream-socket-") as scratch:
        workdir = Path(scratch)
        (workdir / "store").mkdir()
        rates = measure(workdir, args.rounds, args.duration)
    medians = {way: statistics.median(values) for way, values in rates.items()}
    print(f"{'upstream':<8} {'median req/s':>13}   loads")
    for way, values in rates.items():
        print(f"{way:<8} {medians[way]:>13,.0f}   {', '.join(f'{v:,.0f}' for v in values)}")
    print(f"unix ÷ tcp: {medians['unix'] / medians['tcp']:.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"rates": rates, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
