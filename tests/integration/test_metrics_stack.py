"""Metrics across processes: Nginx -> two Gunicorn workers and the gRPC server, one
PROMETHEUS_MULTIPROC_DIR. A scrape through Nginx sums every worker exactly; a worker
killed with SIGKILL keeps its counts in the sums, once; gRPC predictions count too."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from service.localstack import free_port
from tests.support import (
    DEMO_MODELS,
    IRIS,
    IRIS_EXPECTED,
    IRIS_ROWS,
    STACK_WORKERS,
    eventually,
    running_stack,
)

pytestmark = pytest.mark.integration

PREDICT = "/v1/models/<model_ref>/predict"
WORKERS = STACK_WORKERS


@pytest.fixture(scope="module")
def metrics_stack(trained_store_dir, tmp_path_factory):
    def plant_stale_file(stack) -> None:
        # Left over from an earlier run: start() must empty the directory.
        stack.metrics_dir.mkdir(parents=True)
        (stack.metrics_dir / "counter_1.db").write_bytes(b"stale")

    with running_stack(
        tmp_path_factory.mktemp("metrics-stack"),
        store_from=trained_store_dir,
        grpc_port=free_port(),
        before_start=plant_stale_file,
    ) as started:
        yield started


def scrape(stack) -> dict:
    # A new connection each time: any worker may answer, and each must see every worker.
    response = requests.get(f"{stack.url}/metrics", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Server"].startswith("nginx")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def value(families: dict, sample: str, **labels) -> float:
    return sum(
        s.value
        for family in families.values()
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def served_requests(families: dict) -> float:
    labels = {"route": PREDICT, "model": IRIS, "version": "1", "status": "200"}
    return value(families, "model_service_requests_total", **labels)


def worker_starts(stack) -> float:
    return value(scrape(stack), "model_service_worker_starts_total")


def predict(stack, request_id: str) -> None:
    response = requests.post(
        f"{stack.url}/v1/models/{IRIS}/predict",
        json={"instances": IRIS_ROWS},
        headers={"Connection": "close", "X-Request-ID": request_id},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["predictions"] == IRIS_EXPECTED


def request_log(stack) -> dict[str, dict]:
    """The app's JSON request lines in Gunicorn's log, by request id."""
    lines = {}
    for text in (stack.runtime_dir / "gunicorn.log").read_text().splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            if line.get("logger") == "service.requests":
                lines[line["request_id"]] = line
    return lines


def test_counts_are_exact_across_workers_and_survive_a_killed_worker(metrics_stack):
    stack = metrics_stack
    assert not (stack.metrics_dir / "counter_1.db").exists()
    assert served_requests(scrape(stack)) == 0
    # A worker's pid shows a moment before its post_fork hook has counted it.
    eventually(lambda: worker_starts(stack) >= WORKERS, message="both workers' post_fork")
    assert worker_starts(stack) == WORKERS

    # Predict until both workers have answered (new connection each), and count them.
    sent: list[str] = []
    while True:
        request_id = f"spread-{len(sent)}"
        predict(stack, request_id)
        sent.append(request_id)
        line = eventually(
            lambda rid=request_id: request_log(stack).get(rid),
            10,
            message=f"the log of {request_id}",
        )
        served_by = {request_log(stack)[r]["pid"] for r in sent}
        if len(served_by) == WORKERS or len(sent) >= 200:
            break
    assert (line["route"], line["model"], line["instances"]) == (PREDICT, IRIS, len(IRIS_ROWS))
    assert served_by == set(stack.worker_pids())
    n = len(sent)
    for _ in range(4):
        assert served_requests(scrape(stack)) == n

    # SIGKILL a worker that served some of them: no goodbye, no flush.
    victim = request_log(stack)[sent[0]]["pid"]
    os.kill(victim, signal.SIGKILL)
    eventually(
        lambda: victim not in stack.worker_pids() and len(stack.worker_pids()) == WORKERS,
        message="Gunicorn to replace the killed worker",
    )
    eventually(lambda: worker_starts(stack) > WORKERS, message="the new worker's post_fork")
    assert worker_starts(stack) == WORKERS + 1
    m = 7
    for i in range(m):
        predict(stack, f"after-kill-{i}")
    for _ in range(4):
        families = scrape(stack)
        assert served_requests(families) == n + m
        assert value(families, "model_service_worker_starts_total") == WORKERS + 1
    classes = value(families, "model_service_predictions_total", model=IRIS, version="1")
    assert classes == (n + m) * len(IRIS_ROWS)
    assert value(families, "model_service_instances_per_request_count", model=IRIS) == n + m
    # Loaded once per Gunicorn instance, in its master (preload_app); its workers share it.
    assert value(families, "model_service_model_load_seconds_count", model=IRIS) == len(
        metrics_stack.master_pids()
    )
    info = [s.labels for s in families["model_service_model_info"].samples]
    assert {labels["model"] for labels in info} == set(DEMO_MODELS)
    assert all("pid" not in labels for labels in info)


def test_grpc_predictions_count_in_the_same_sums(metrics_stack):
    stack = metrics_stack
    before = scrape(stack)
    rows = np.array(IRIS_ROWS)
    tensor = triton.InferInput("instances", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    k = 3
    with triton.InferenceServerClient(stack.grpc_address) as client:
        for _ in range(k):
            result = client.infer(IRIS, [tensor])
            assert result.as_numpy("predict").tolist() == [c.encode() for c in IRIS_EXPECTED]
    after = scrape(stack)
    for label in IRIS_EXPECTED:
        labels = {"model": IRIS, "version": "1", "class": label}
        moved = value(after, "model_service_predictions_total", **labels) - value(
            before, "model_service_predictions_total", **labels
        )
        assert moved == k
    count = "model_service_instances_per_request_count"
    assert value(after, count, model=IRIS) - value(before, count, model=IRIS) == k
    # Not HTTP requests: the request counters did not move.
    assert served_requests(after) == served_requests(before)
