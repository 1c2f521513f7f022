"""The compiled backend through Nginx → Gunicorn: the master loads the ONNX sessions before
it forks (preload_app) and the workers serve with them; ``modelctl optimize`` gives a
running service's pickle-only version its ONNX form, and every worker switches to it
within the reload interval, without a restart."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from service.cli import main
from service.runtime.model import load
from service.store import ModelStore
from service.training.demo import demo_specs
from service.training.trainer import train
from tests.integration.conftest import DEMO_STACK_WORKERS, demo_stack
from tests.outputs import same_as

pytestmark = pytest.mark.integration

IRIS = "iris-classifier"
CANCER = "breast-cancer-classifier"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]


@pytest.fixture(scope="module")
def onnx_stack(trained_store_dir, tmp_path_factory):
    def publish_pickle_only(stack) -> None:
        # iris version 2: the same spec, published without an ONNX form, in production.
        (iris,) = [spec for spec in demo_specs() if spec.name == IRIS]
        train(iris, ModelStore(stack.store), aliases=("production",), onnx=False)

    with demo_stack(
        trained_store_dir,
        tmp_path_factory,
        "onnx-stack",
        {"MODEL_SERVICE_RELOAD_INTERVAL": "0.2"},
        before_start=publish_pickle_only,
    ) as started:
        yield started


def predict(url: str, name: str, rows) -> dict:
    response = requests.post(f"{url}/v1/models/{name}/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    assert response.headers["Server"].startswith("nginx")
    return response.json()


def test_forked_workers_serve_through_onnxruntime(onnx_stack):
    model = load(ModelStore(onnx_stack.store), CANCER, 1, backend="sklearn")
    rows = np.asarray(model.metadata["golden"]["instances"])
    # Enough requests for both workers to answer several (Nginx spreads them).
    for _ in range(8 * DEMO_STACK_WORKERS):
        body = predict(onnx_stack.url, CANCER, rows.tolist())
        assert body["backend"] == "onnxruntime"
        assert body["predictions"] == same_as(model.estimator.predict(rows))
        assert body["probabilities"] == same_as(model.estimator.predict_proba(rows))
    listing = requests.get(f"{onnx_stack.url}/v1/models").json()["models"]
    assert {m["name"]: m["backend"] for m in listing}[CANCER] == "onnxruntime"


def test_optimize_switches_every_worker_without_a_restart(onnx_stack, capsys):
    before = predict(onnx_stack.url, IRIS, IRIS_ROWS)
    assert (before["version"], before["backend"]) == (2, "sklearn")

    assert main(["optimize", f"{IRIS}@production", "--store", str(onnx_stack.store)]) == 0
    assert "onnx: model.onnx (double)" in capsys.readouterr().out

    # Every worker polls the store each 0.2 s; a run of answers all from onnxruntime
    # (twice the requests that reach each worker) shows every one of them switched.
    deadline, in_a_row = time.monotonic() + 20, 0
    while in_a_row < 10 * DEMO_STACK_WORKERS and time.monotonic() < deadline:
        body = predict(onnx_stack.url, IRIS, IRIS_ROWS)
        in_a_row = in_a_row + 1 if body["backend"] == "onnxruntime" else 0
        time.sleep(0.02)
    assert in_a_row >= 10 * DEMO_STACK_WORKERS, "the workers did not all switch to onnxruntime"
    assert body["version"] == 2
    assert body["predictions"] == before["predictions"] == ["setosa", "virginica"]
    assert body["probabilities"] == same_as(before["probabilities"])
