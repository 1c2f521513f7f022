"""The load-test tooling runs end to end: the benchmark (quick mode) and the locustfile.

No figure is compared with a threshold: these tests check that every measurement
is made and that the locustfile judges answers correctly, never how fast they came.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from service.localstack import LocalStack, free_port
from service.training.demo import demo_specs

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "loadtests" / "bench.py"
LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
DEMO_MODEL_NAMES = {spec.name for spec in demo_specs()}
HELLO_TARGET = "hello (ceiling)"
BENCH_TIMEOUT_S = 240
LOCUST_TIMEOUT_S = 120
# After a timeout: how long a SIGTERMed run gets to stop the stacks it started.
CLEANUP_TIMEOUT_S = 60


def run_bounded(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command from the repository root. Past the timeout it gets SIGTERM first,
    so its own finally blocks stop the stacks it started, and SIGKILL only after that."""
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            stdout, stderr = process.communicate(timeout=CLEANUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"{command[:3]} ran past {timeout} s\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def assert_positive(row: dict, *keys: str) -> None:
    for key in keys:
        value = row[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, row)


@pytest.mark.integration
@pytest.mark.parametrize(
    "generator_args", [[], ["--load-generator", "builtin"]], ids=["auto", "builtin"]
)
def test_bench_quick_reports_every_figure(tmp_path, generator_args):
    results_path = tmp_path / "bench.json"
    done = run_bounded(
        [sys.executable, str(BENCH), "--quick", "--json", str(results_path), *generator_args],
        BENCH_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(results_path.read_text())

    assert results["load_generator"]["tool"] in {"wrk", "built-in"}
    if generator_args:
        assert results["load_generator"]["tool"] == "built-in"
    assert results["load_generator"]["tool"] in done.stdout

    single = {row["target"]: row for row in results["single_row"]}
    assert set(single) == {HELLO_TARGET, *DEMO_MODEL_NAMES}
    for target, row in single.items():
        assert row["errors"] == 0, row
        assert_positive(row, "requests", "requests_per_s", "p50_ms", "p99_ms")
        if target != HELLO_TARGET:
            assert_positive(row, "requests_per_s_ratio", "p50_ratio", "p99_ratio")
        assert target in done.stdout

    batch = {row["model"]: row for row in results["batch"]}
    assert set(batch) == DEMO_MODEL_NAMES
    for row in batch.values():
        assert row["rows"] == 1000
        assert_positive(row, "http_rows_per_s", "loaded_model_rows_per_s", "estimator_rows_per_s")

    protocols = {row["protocol"]: row for row in results["protocols_single_row"]}
    assert set(protocols) == {"native", "v2 JSON", "v2 binary", "MLflow"}
    for protocol, row in protocols.items():
        assert row["errors"] == 0, row
        assert_positive(row, "requests_per_s", "p50_ms", "p99_ms")
        assert protocol in done.stdout
    assert protocols["native"]["requests_per_s_ratio_to_native"] == 1.0
    protocol_batch = {row["model"]: row["rows_per_s"] for row in results["protocols_batch"]}
    assert set(protocol_batch) == DEMO_MODEL_NAMES
    for by_protocol in protocol_batch.values():
        assert set(by_protocol) == set(protocols)
        assert all(rows_per_s > 0 for rows_per_s in by_protocol.values()), by_protocol

    memory = {row["stack"]: row for row in results["memory"]}
    assert set(memory) == {"model-service", "hello"}
    for row in memory.values():
        assert row["workers"] == 2, row
        assert_positive(row, "total_pss_mib", "master_pss_mib", "worker_pss_mib", "worker_rss_mib")
        assert row["total_pss_mib"] > row["worker_pss_mib"], row

    # Metrics and the request log on (the single-row figures above) against off.
    monitoring = {row["model"]: row for row in results["monitoring_cost"]}
    assert set(monitoring) == DEMO_MODEL_NAMES
    for name, row in monitoring.items():
        assert row["errors_off"] == 0, row
        assert_positive(row, "requests_per_s_on", "requests_per_s_off", "requests_per_s_ratio")
        assert row["requests_per_s_on"] == single[name]["requests_per_s"], row
    assert "Monitoring cost" in done.stdout


@pytest.fixture
def running_stack(store_dir, tmp_path):
    stack = LocalStack(runtime_dir=tmp_path / "run", store=store_dir, port=free_port(), workers=2)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def read_locust_stats(csv_prefix: Path) -> tuple[dict[str, dict], dict]:
    with open(f"{csv_prefix}_stats.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    per_name = {row["Name"]: row for row in rows if row["Name"] != "Aggregated"}
    (aggregated,) = (row for row in rows if row["Name"] == "Aggregated")
    return per_name, aggregated


@pytest.mark.integration
def test_locustfile_fails_only_wrong_answers(running_stack, tmp_path):
    csv_prefix = tmp_path / "locust"
    done = run_bounded(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            "4",
            "-r",
            "4",
            "--run-time",
            "4s",
            "--host",
            running_stack.url,
            "--csv",
            str(csv_prefix),
            "--batch-size",
            "20",
            "--batch-share",
            "0.3",
            "--invalid-share",
            "0.3",
            "--only-summary",
        ],
        LOCUST_TIMEOUT_S,
    )
    per_name, aggregated = read_locust_stats(csv_prefix)
    failures_csv = Path(f"{csv_prefix}_failures.csv").read_text()

    assert int(aggregated["Request Count"]) > 0, done.stderr
    valid = {name: row for name, row in per_name.items() if "[invalid:" not in name}
    invalid = {name: row for name, row in per_name.items() if "[invalid:" in name}
    assert {name.split("/")[3] for name in valid} == DEMO_MODEL_NAMES
    assert any(name.endswith("[1 row]") for name in valid)
    assert any(name.endswith("[20 rows]") for name in valid)
    assert sum(int(row["Request Count"]) for row in invalid.values()) > 0

    failed_valid = {
        n: row["Failure Count"] for n, row in valid.items() if int(row["Failure Count"])
    }
    assert not failed_valid, failures_csv
    # Each invalid request got its 4xx, so none of them counts as a failure either.
    failed_invalid = {
        n: row["Failure Count"] for n, row in invalid.items() if int(row["Failure Count"])
    }
    assert not failed_invalid, failures_csv
    assert done.returncode == 0, done.stdout + done.stderr
