"""The load-test tooling runs end to end: the benchmark (quick mode) and the locustfile.

No figure is compared with a threshold: these tests check that every measurement
is made and that the locustfile judges answers correctly, never how fast they came.
"""

from __future__ import annotations

import csv
import http.server
import json
import math
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import Histogram

from loadtests.benchlib import loads
from loadtests.benchlib import report as bench_report
from loadtests.benchlib import rows as bench_rows
from service.localstack import nginx_binary
from service.training.demo import demo_specs
from tests.support import CANCER, DIABETES, IRIS, running_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "loadtests" / "bench.py"
WORKER_CPU = REPO_ROOT / "loadtests" / "worker_cpu.py"
WORKER_MODELS = REPO_ROOT / "loadtests" / "worker_models.py"
LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
PEERS_VENV = REPO_ROOT / ".bench-peers"
DEMO_MODEL_NAMES = {spec.name for spec in demo_specs()}
# `bench.py --quick` took 197-232 s here on 2 cores, alone, with a stack of its own for
# each model's monitoring-off load; under a full `make test` it once ran past 240 s.
BENCH_TIMEOUT_S = 360
LOCUST_TIMEOUT_S = 120
REQUEST_COST_TIMEOUT_S = 180
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


def expected_rows() -> set[str]:
    """The figures every bench run reports, whatever the machine (peers apart)."""
    keys = {"single/hello", "paced/hello", f"paced/naive/{IRIS}", f"paced/service/{IRIS}"}
    keys |= {f"single/naive/{name}" for name in (IRIS, CANCER)}
    keys |= {
        f"single/{who}/{name}"
        for who in ("naive-onnx", "naive-onnx-duties", "service")
        for name in DEMO_MODEL_NAMES
    }
    keys |= {f"single/monitoring-off/{name}" for name in (IRIS, DIABETES)}
    keys |= {f"single/{protocol}/{IRIS}" for protocol in ("v2-json", "v2-binary", "mlflow-format")}
    for name in DEMO_MODEL_NAMES:
        whos = ("hello", "hello-binary", "compute-bound", "naive", "naive-onnx")
        whos += ("native-lists", "native")
        whos += ("v2-json",)
        whos += ("v2-binary", "mlflow-format")
        for who in whos:
            keys.add(f"batch/{who}/{name}")
        for rows in (1, 1000):
            keys |= {f"inproc/loaded-model/{rows}/{name}", f"inproc/estimator/{rows}/{name}"}
        keys.add(f"inproc/backend/1000/{name}")
        # (What is left of the whole, "rest", may round to 0.)
        stages = ("whole", "parse", "validation", "backend", "encoding", "gzip")
        keys |= {f"breakdown/{stage}/{name}" for stage in stages}
        keys.add(f"memory/naive/{name}")
        whos = ("naive-onnx", "naive-onnx-duties", "service", "monitoring-off")
        keys |= {f"request/{who}/{name}" for who in whos}
    # The bare handler answering probabilities too: the classifiers only.
    keys |= {f"batch/naive-onnx-probabilities/{name}" for name in (IRIS, CANCER)}
    keys |= {"memory/service-1w", "memory/service-4w", "memory/service", "memory/hello"}
    keys |= {"memory/service-4w-1i", "memory/service-2w-2i", "request/hello"}
    return keys


@pytest.mark.integration
def test_bench_quick_reports_every_goal_and_row(tmp_path):
    results_path = tmp_path / "bench.json"
    done = run_bounded(
        [sys.executable, str(BENCH), "--quick", "--json", str(results_path)], BENCH_TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(results_path.read_text())
    assert results["load_generator"]["tool"] in {"wrk", "built-in"}
    assert results["load_generator"]["tool"] in done.stdout

    # The goals: each a finite, positive ratio of two figures of this run, with its target
    # and a verdict (which one is not for a test to say).
    goals = results["goals"]
    peers = (PEERS_VENV / "bin" / "mlflow").exists()
    models = len(DEMO_MODEL_NAMES)
    assert [row["goal"] for row in goals] == [
        *["P1"] * models,
        *["P3 native", "P3 v2 binary"] * models,
        "P4",
        "P5",
        "M",
        "M",
        *["MLflow"] * (models if peers else 0),
    ]
    for row in goals:
        assert_positive(row, "value", "ratio", "target")
        assert row["comparison"] in {">=", "<="}
        assert row["passed"] is (
            row["ratio"] >= row["target"]
            if row["comparison"] == ">="
            else row["ratio"] <= row["target"]
        )
        assert row["label"] in done.stdout
    by_goal = {(row["goal"], row["key"]): row for row in goals}
    figures = {row["key"]: row for row in results["rows"]}
    for name in DEMO_MODEL_NAMES:
        # P1: the service ÷ the bare onnxruntime handler (orjson in and out) on one row.
        p1 = by_goal[("P1", f"single/service/{name}")]
        bare = figures[f"single/naive-onnx/{name}"]["value"]
        assert p1["ratio"] == pytest.approx(p1["value"] / bare)
    p3 = {key.split("/")[2] for goal, key in by_goal if goal.startswith("P3")}
    assert p3 == DEMO_MODEL_NAMES
    for row in goals:
        # P3: body intake and the backend on the same cores, ÷ the bare handler.
        if row["goal"].startswith(("P1", "P3", "P4")):
            assert_positive(row, "bound")
            assert f"({row['bound_label']} {row['bound']:.2f})" in done.stdout
        else:
            assert row["bound"] is None
    # P1's bound: the bare handler doing P1's duties, measured in the same run, over the
    # bare handler; its loads answered without an error, and in process it did more work.
    for name in DEMO_MODEL_NAMES:
        p1 = by_goal[("P1", f"single/service/{name}")]
        duties = figures[f"single/naive-onnx-duties/{name}"]
        assert duties["errors"] == 0
        assert p1["bound_label"] == "bound, doing P1's duties"
        bare = figures[f"single/naive-onnx/{name}"]["value"]
        assert p1["bound"] == pytest.approx(duties["value"] / bare)
        assert (
            figures[f"request/naive-onnx-duties/{name}"]["value"]
            > figures[f"request/naive-onnx/{name}"]["value"]
        )
    # P3 native's bound: the lowest of intake plus backend, the bare handler doing P1's
    # duties on the same 1,000-row body, and for a classifier the bare handler answering
    # probabilities as the service does, each over the bare handler.
    for name in DEMO_MODEL_NAMES:
        p3 = by_goal[("P3 native", f"batch/native-lists/{name}")]
        bare = figures[f"batch/naive-onnx/{name}"]["value"]
        duties = figures[f"batch/naive-onnx-duties/{name}"]
        assert duties["errors"] == 0
        candidates = {"bound, doing P1's duties": duties["value"] / bare}
        if name != DIABETES:
            answering = figures[f"batch/naive-onnx-probabilities/{name}"]["value"] / bare
            candidates["bound, answering probabilities"] = answering
        assert p3["bound"] <= min(candidates.values()) + 1e-9
        if p3["bound_label"] in candidates:
            assert p3["bound"] == pytest.approx(candidates[p3["bound_label"]])
        # P3 v2 binary's: the same handler on the same v2 binary body, when lower.
        v2 = by_goal[("P3 v2 binary", f"batch/v2-binary/{name}")]
        binary = figures[f"batch/naive-onnx-duties-v2-binary/{name}"]
        assert binary["errors"] == 0
        assert v2["bound"] <= binary["value"] / bare + 1e-9
        if v2["bound_label"] == "bound, doing P1's duties":
            assert v2["bound"] == pytest.approx(binary["value"] / bare)
    # P4's bound: 1 worker on each of two Gunicorn instances, over 1 worker.
    p4 = by_goal[("P4", "memory/service-4w")]
    floor = figures["memory/service-2w-2i"]["value"] / figures["memory/service-1w"]["value"]
    assert p4["bound"] == pytest.approx(floor)
    # Each model's references are loaded right before the service's own loads of it: the
    # loads in between are of that model only. Every single-row load of the service comes
    # before its 1,000-row ones (as on the stacks with monitoring off that M compares with).
    loads = [
        word
        for line in done.stderr.splitlines()
        if " load " in line
        for word in line.split()
        if word.startswith(("single/", "batch/"))
    ]
    for name in DEMO_MODEL_NAMES:
        first = loads.index(f"single/naive-onnx/{name}")
        between = loads[first : loads.index(f"single/service/{name}")]
        assert between == [f"single/naive-onnx/{name}", f"single/naive-onnx-duties/{name}"]
        first = loads.index(f"batch/naive-onnx/{name}")
        between = loads[first : loads.index(f"batch/native-lists/{name}")]
        assert {key.split("/")[2] for key in between} == {name}, between
        assert f"batch/naive-onnx-duties-v2-binary/{name}" in between
    # M's two sides: the service's single-row load of a model, then monitoring off's.
    for name in bench_rows.MONITORING_OFF_MODELS:
        after = loads[loads.index(f"single/service/{name}") + 1]
        assert after == f"single/monitoring-off/{name}"
    last_single = max(i for i, key in enumerate(loads) if key.startswith("single/service/"))
    assert last_single < min(i for i, key in enumerate(loads) if key.startswith("batch/native-"))
    paced = by_goal[("P5", f"paced/service/{IRIS}")]
    # The pacing itself: at 80 % of the closed-loop rate of P1, and never above that.
    target_rate = paced["figures"]["target_requests_per_s"]
    assert target_rate == pytest.approx(0.8 * by_goal[("P1", f"single/service/{IRIS}")]["value"])
    assert paced["value"] <= 1.1 * target_rate + 4, paced
    hello = figures["paced/hello"]
    own = paced["p99_ms"] / paced["p50_ms"]
    assert paced["ratio"] == pytest.approx(own / (hello["p99_ms"] / hello["p50_ms"]))

    rows = {row["key"]: row for row in results["rows"]}
    assert expected_rows() <= set(rows)
    for key in expected_rows():
        row = rows[key]
        assert row["label"] in done.stdout, key
        assert_positive(row, "value")
        if key.startswith(("single/", "paced/")):
            assert row["errors"] == 0, row
            assert_positive(row, "p50_ms", "p99_ms")
    # Side by side: each service row against the naive handler of the same model.
    for name in (IRIS, CANCER):
        assert rows[f"single/service/{name}"]["ratio_of"] == "naive"
        assert_positive(rows[f"single/service/{name}"], "ratio")
    for name in DEMO_MODEL_NAMES:
        assert rows[f"batch/v2-binary/{name}"]["ratio_of"] == "naive"
        # The compute bound: every core running the backend the service chose.
        bound = rows[f"batch/compute-bound/{name}"]
        assert bound["figures"]["cores"] == results["settings"]["cpus"]
        assert bound["backend"] == rows[f"inproc/backend/1000/{name}"]["backend"]
    for workers in (1, 4):
        assert rows[f"memory/service-{workers}w"]["figures"]["workers"] == workers
    # P4's layouts: the Gunicorn instances each stack ran, and the bound they set.
    assert rows["memory/service-4w"]["figures"]["instances"] == 2
    assert rows["memory/service-4w-1i"]["figures"]["instances"] == 1
    assert rows["memory/service-2w-2i"]["figures"]["instances"] == 2
    assert rows["memory/service"]["figures"]["workers"] == 2

    # Which backend answered: named by the service's answers, "-" when they name none.
    assert all(rows[f"single/service/{name}"]["backend"] for name in DEMO_MODEL_NAMES)
    if rows[f"single/service/{IRIS}"]["backend"] not in {"-", "sklearn"}:
        for name in (IRIS, CANCER):
            assert rows[f"single/backend-sklearn/{name}"]["backend"] == "sklearn"
            assert_positive(rows[f"single/backend-sklearn/{name}"], "value")

    # MLflow's own server: measured only when `make bench-peers` has installed it.
    if (PEERS_VENV / "bin" / "mlflow").exists():
        assert results["peers"]["mlflow"]
        for name in (IRIS, CANCER):
            assert_positive(rows[f"single/mlflow-serve/{name}"], "value", "p50_ms", "p99_ms")
        for name in DEMO_MODEL_NAMES:
            assert_positive(rows[f"batch/mlflow-serve/{name}"], "value")
    else:
        assert results["peers"]["mlflow"] is None
        assert rows["peers/mlflow"]["note"] == "not installed (make bench-peers)"
        assert "not installed (make bench-peers)" in done.stdout


def test_goals_give_their_ratio_and_bound_in_each_round():
    def figures(service: float, bare: float, duties: float) -> dict:
        return {
            f"single/service/{IRIS}": {"requests_per_s": service},
            f"single/naive-onnx/{IRIS}": {"requests_per_s": bare},
            f"single/naive-onnx-duties/{IRIS}": {"requests_per_s": duties},
        }

    rounds = [figures(800, 1000, 900), figures(1000, 1000, 950), figures(990, 1100, 1000)]
    goals = bench_rows.goal_rows(bench_rows.median_figures(rounds), [IRIS])
    each = [bench_rows.goal_rows(one, [IRIS]) for one in rounds]
    p1 = next(row for row in bench_rows.with_round_ratios(goals, each) if row.goal == "P1")
    assert p1.ratio == pytest.approx(990 / 1000)  # the medians' ratio
    assert p1.round_ratios == pytest.approx([0.8, 1.0, 0.9])
    assert p1.round_bounds == pytest.approx([0.9, 0.95, 1000 / 1100])
    assert bench_report.format_row(p1.as_json()).endswith("; by round 0.80, 1.00, 0.90")
    # A goal no round measured has no figure there; one round alone gives none at all.
    m = next(row for row in goals if row.goal == "M" and row.key.endswith(IRIS))
    assert m.round_ratios == [None, None, None]
    single = bench_rows.goal_rows(rounds[0], [IRIS])
    assert all(row.round_ratios == [] for row in bench_rows.with_round_ratios(single, each[:1]))
    assert "by round" not in bench_report.format_row(single[0].as_json())


@pytest.mark.integration
def test_worker_models_quick_reports_each_worker_model(tmp_path):
    results_path = tmp_path / "workers.json"
    command = [sys.executable, str(WORKER_MODELS), "--quick", "--json", str(results_path)]
    done = run_bounded([*command, "--configs", "sync:1,gthread:1:2"], BENCH_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(results_path.read_text())["worker_models"]
    assert [(r["worker_class"], r["workers"], r["threads"]) for r in rows] == [
        ("sync", 1, 1),
        ("gthread", 1, 2),
    ]
    for row in rows:
        assert row["label"] in done.stdout
        assert row["memory"]["workers"] == 1
        for load in (row["1 row"], row["1,000 rows"]):
            assert load["errors"] == 0, load
            assert_positive(load, "requests_per_s", "rows_per_s", "p50_ms", "p99_ms")


def test_worker_cpu_quick_reports_each_target(tmp_path):
    results_path = tmp_path / "cpu.json"
    command = [sys.executable, str(WORKER_CPU), "--quick", "--json", str(results_path)]
    done = run_bounded(command, BENCH_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(results_path.read_text())["targets"]
    assert [row["target"] for row in rows] == ["hello", "naive-onnx", "service"]
    for row in rows:
        assert row["label"] in done.stdout
        assert row["errors"] == 0, row
        # Every request passes through both sides, so each spends some CPU time on it
        # (without Nginx installed the stack is Gunicorn alone, and Nginx counts nothing).
        assert_positive(row, "requests_per_s", "gunicorn_user_us", "total_us")
        if nginx_binary() is not None:
            assert_positive(row, "nginx_user_us")
        else:
            assert row["nginx_user_us"] == row["nginx_system_us"] == 0
        assert row["total_us"] == pytest.approx(
            sum(
                row[f"{side}_{kind}_us"]
                for side in ("gunicorn", "nginx")
                for kind in ("user", "system")
            )
        )


class _Answer200(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"predictions": [0]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def answering_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer200)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("generator", ["builtin", "wrk"])
def test_load_generators_pace_to_the_rate_asked(answering_server, tmp_path, generator):
    """P5's paced load: a rate far below what the server answers is what is sent."""
    if generator == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    load = loads.choose_load_generator(generator, tmp_path, 2, 4, 2)
    body = b'{"instances": [[1.0]]}'
    rate = 100.0
    paced = load.run(answering_server, body, rate=rate)
    assert paced.errors == 0
    assert 0.5 * rate <= paced.requests_per_s <= 1.1 * rate + 2, paced
    assert 0 < paced.p50_ms <= paced.p99_ms


@pytest.fixture
def served_stack(store_dir, tmp_path):
    """The demo models on two workers, behind Nginx when it is installed."""
    with running_stack(tmp_path, store=store_dir, use_nginx=None) as stack:
        yield stack


def read_locust_stats(csv_prefix: Path) -> tuple[dict[str, dict], dict]:
    with open(f"{csv_prefix}_stats.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    per_name = {row["Name"]: row for row in rows if row["Name"] != "Aggregated"}
    (aggregated,) = (row for row in rows if row["Name"] == "Aggregated")
    return per_name, aggregated


@pytest.mark.integration
def test_locustfile_fails_only_wrong_answers(served_stack, tmp_path):
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
            served_stack.url,
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


@pytest.mark.parametrize("evict", [[], ["--evict-mib", "1"]], ids=["tight-loop", "evicting"])
def test_request_cost_times_hello_the_naive_onnx_handler_and_each_model(trained_store_dir, evict):
    done = run_bounded(
        [
            sys.executable,
            str(REPO_ROOT / "loadtests" / "request_cost.py"),
            "--requests",
            "50",
            "--store",
            str(trained_store_dir),
            *evict,
        ],
        REQUEST_COST_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {}
    for line in done.stdout.splitlines()[1:]:
        name, rest = line.split(None, 1)
        settings, micros, over = rest.rsplit(None, 2)
        if name == "hello":
            name, settings = "hello", "-"
        rows[(name, settings.strip())] = (float(micros), float(over))
    expected = {("hello", "-")}
    for name in DEMO_MODEL_NAMES:
        for settings in (
            "naive handler on onnxruntime",
            "the same doing P1's duties",
            "defaults",
            "metrics and request log off",
        ):
            expected.add((name, settings))
    assert set(rows) == expected
    assert all(micros > 0 for micros, _ in rows.values())
    assert rows[("hello", "-")][1] == 0


def test_the_duties_handler_answers_as_the_bare_one_and_does_each_duty(
    trained_store_dir, tmp_path, monkeypatch
):
    """P1's bound must do what it claims: the same predictions as the bare handler, bad
    bodies refused with a 400, a request log line, counted bins, Prometheus samples."""
    from loadtests import request_cost

    log = tmp_path / "requests.log"
    monkeypatch.setenv("BENCH_DUTIES_LOG", str(log))
    onnx_path, body = request_cost.naive_onnx_requests(trained_store_dir)[IRIS]
    monkeypatch.setenv("BENCH_NAIVE_ONNX", str(onnx_path))  # restored after the test
    bare = request_cost.reference_module("naive_onnx_app.py", onnx_path).app.test_client()
    module = request_cost.reference_module("duties_app.py", onnx_path)
    duties = module.app.test_client()

    expected = bare.post("/predict", data=body, content_type="application/json").get_json()
    answer = duties.post(
        "/predict", data=body, content_type="application/json", headers={"X-Request-ID": "r-1"}
    )
    assert answer.status_code == 200
    assert answer.headers["X-Request-ID"] == "r-1"
    found = answer.get_json()
    assert found["predictions"] == expected["predictions"]
    assert found["model"] == IRIS and len(found["probabilities"][0]) == len(found["classes"])
    for bad in (b"", b"[1]", b'{"instances": [[1, 2]]}', b'{"instances": [["a", 1, 2, 3]]}'):
        refused = duties.post("/predict", data=bad, content_type="application/json")
        assert refused.status_code == 400, bad
        assert refused.get_json()["error"]["code"] == "invalid_input"
    # The log is buffered: what was written shows once the module's file is flushed.
    module.request_log.handle.flush()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["status"] for line in lines] == [200, 400, 400, 400, 400]
    assert lines[0]["request_id"] == "r-1" and lines[0]["model"] == IRIS
    assert module.drift_counts.sum() == module.WIDTH  # one row, every feature
    samples = {
        (s.name, s.labels.get("status")): s.value
        for metric in module.registry.collect()
        for s in metric.samples
        if s.labels.get("route") in (None, "/predict")
    }
    assert samples[("bench_requests_total", "200")] == 1
    assert samples[("bench_requests_total", "400")] == 4

    # Many rows: each row's class counted, each feature of each row binned, at once.
    rows = json.loads(body)["instances"] * 3
    many = duties.post("/predict", json={"instances": rows})
    assert many.status_code == 200 and len(many.get_json()["predictions"]) == 3
    assert module.drift_counts.sum() == module.WIDTH * 4
    classes = [
        s.value
        for metric in module.registry.collect()
        for s in metric.samples
        if s.name == "bench_predicted_class_total"
    ]
    assert sum(classes) == 4


def test_the_duties_handler_answers_v2_binary_as_it_answers_json(
    trained_store_dir, tmp_path, monkeypatch
):
    """P3 v2 binary's bound: the same duties on the binary tensor extension, the same
    predictions and probabilities as raw bytes, and a 400 for a body it cannot take."""
    from loadtests import request_cost

    monkeypatch.setenv("BENCH_DUTIES_LOG", str(tmp_path / "requests.log"))
    onnx_path, body = request_cost.naive_onnx_requests(trained_store_dir)[IRIS]
    monkeypatch.setenv("BENCH_NAIVE_ONNX", str(onnx_path))  # restored after the test
    module = request_cost.reference_module("duties_app.py", onnx_path)
    client = module.app.test_client()
    rows = json.loads(body)["instances"] * 3
    expected = client.post("/predict", json={"instances": rows}).get_json()

    def binary_request(shape, raw, size=None):
        tensor = {"name": "input-0", "shape": shape, "datatype": "FP64"}
        tensor["parameters"] = {"binary_data_size": len(raw) if size is None else size}
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
        return client.post(
            "/infer-binary",
            data=header.encode() + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
            content_type="application/octet-stream",
        )

    raw = struct.pack(f"<{3 * module.WIDTH}d", *[v for row in rows for v in row])
    answer = binary_request([3, module.WIDTH], raw)
    assert answer.status_code == 200
    data = answer.get_data()
    length = int(answer.headers["Inference-Header-Content-Length"])
    header = json.loads(data[:length])
    outputs = {o["name"]: o for o in header["outputs"]}
    assert outputs["predict"]["datatype"] == "BYTES" and outputs["predict"]["shape"] == [3]
    labels_size = outputs["predict"]["parameters"]["binary_data_size"]
    labels, offset = [], length
    while offset < length + labels_size:
        (size,) = struct.unpack_from("<I", data, offset)
        labels.append(data[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    assert labels == expected["predictions"]
    assert outputs["probabilities"]["shape"] == [3, len(expected["classes"])]
    probabilities = struct.unpack_from(f"<{3 * len(expected['classes'])}d", data, offset)
    flat = [p for row in expected["probabilities"] for p in row]
    assert list(probabilities) == pytest.approx(flat)
    assert module.drift_counts.sum() == module.WIDTH * 6  # both requests' rows

    nan = struct.pack(f"<{module.WIDTH}d", *([float("nan")] * module.WIDTH))
    for shape, raw_body, size in (
        ([3, module.WIDTH + 1], raw, None),  # the wrong width
        ([3, module.WIDTH], raw, len(raw) - 8),  # a size that is not the body's
        ([4, module.WIDTH], raw, None),  # more rows than values
        ([1, module.WIDTH], nan, None),  # values that are not finite
    ):
        refused = binary_request(shape, raw_body, size)
        assert refused.status_code == 400, (shape, size)
        assert refused.get_json()["error"]["code"] == "invalid_input"
    no_header = client.post("/infer-binary", data=raw, content_type="application/octet-stream")
    assert no_header.status_code == 400


def test_the_duties_handler_observes_a_regressors_values_a_batch_at_once(
    trained_store_dir, tmp_path, monkeypatch
):
    """The histogram of predicted values after a batch holds what observing each value
    alone would: every value in the first bucket at or above it, and their sum."""
    from loadtests import request_cost

    monkeypatch.setenv("BENCH_DUTIES_LOG", str(tmp_path / "requests.log"))
    onnx_path, body = request_cost.naive_onnx_requests(trained_store_dir)[DIABETES]
    monkeypatch.setenv("BENCH_NAIVE_ONNX", str(onnx_path))  # restored after the test
    module = request_cost.reference_module("duties_app.py", onnx_path)
    row = json.loads(body)["instances"][0]
    rows = [[value * scale for value in row] for scale in (0.0, 0.5, 1.0, 1.5, 2.0)]
    answer = module.app.test_client().post("/predict", json={"instances": rows})
    assert answer.status_code == 200
    predictions = answer.get_json()["predictions"]
    expected = Histogram(
        "expected", "", ["model"], buckets=module.values._upper_bounds, registry=None
    )
    for value in predictions:
        expected.labels(module.MODEL).observe(value)

    def samples(histogram):
        return {
            (s.name.rsplit("_", 1)[-1], s.labels.get("le")): s.value
            for metric in histogram.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    # The values fall in more than one bucket: the batch's split among them is checked.
    filled = [n for (kind, le), n in samples(expected).items() if kind == "bucket" and n]
    assert len(set(filled)) > 1
    assert samples(module.value_histogram) == pytest.approx(samples(expected))


def test_the_duties_handler_bins_each_feature_against_its_own_edges(
    trained_store_dir, tmp_path, monkeypatch
):
    """A value's bin is how many of its feature's inner edges lie at or below it: values
    on an edge, between edges, below the first and above the last, on a model with many
    features (breast-cancer's 30) whose histograms need not have the same bin count."""
    from loadtests import request_cost

    monkeypatch.setenv("BENCH_DUTIES_LOG", str(tmp_path / "requests.log"))
    onnx_path, _ = request_cost.naive_onnx_requests(trained_store_dir)[CANCER]
    monkeypatch.setenv("BENCH_NAIVE_ONNX", str(onnx_path))
    module = request_cost.reference_module("duties_app.py", onnx_path)
    edges = [
        np.asarray(f["stats"]["histogram"]["edges"], dtype=np.float64) for f in module.features
    ]
    rows = np.array(
        [[e[0] - 1.0 for e in edges], [e[-1] + 1.0 for e in edges]]
        + [[e[i % (len(e) - 2) + 1] for e in edges] for i in range(5)]
        + [[(e[1] + e[2]) / 2 for e in edges]]
    )
    module.drift_counts[:] = 0
    module.count_bins(rows)
    expected = np.zeros_like(module.drift_counts)
    for column, feature_edges in enumerate(edges):
        for value in rows[:, column]:
            expected[column * module.BINS + int((value >= feature_edges[1:-1]).sum())] += 1
    assert module.drift_counts.tolist() == expected.tolist()
    assert expected[:: module.BINS].sum() == module.WIDTH  # the row below every first edge


@pytest.mark.integration
def test_upstream_socket_loads_hello_over_tcp_and_over_the_unix_socket(tmp_path):
    # Nginx and wrk are required here, as .ci/run installs them.
    results_path = tmp_path / "upstream.json"
    command = [
        sys.executable,
        str(REPO_ROOT / "loadtests" / "upstream_socket.py"),
        "--rounds",
        "1",
        "--duration",
        "1",
        "--json",
        str(results_path),
    ]
    done = run_bounded(command, BENCH_TIMEOUT_S)
    # The script itself checks, from Nginx's access log, that each load went its way.
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(results_path.read_text())
    assert set(results["rates"]) == {"tcp", "unix"}
    for way in ("tcp", "unix"):
        assert len(results["rates"][way]) == 1
        assert results["medians"][way] > 0
    assert "unix ÷ tcp" in done.stdout
