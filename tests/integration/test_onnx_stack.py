"""The compiled backend through Nginx → Gunicorn: the master loads the ONNX sessions before
it forks (preload_app) and the workers serve with them; ``modelctl optimize`` gives a
running service's pickle-only version its ONNX form, and every worker switches to it
within the reload interval, without a restart."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from service.cli import main
from service.runtime.model import load
from service.store import ModelStore
from service.training.demo import demo_specs
from service.training.trainer import train
from tests.outputs import same_as
from tests.support import (
    CANCER,
    IRIS,
    IRIS_EXPECTED,
    IRIS_ROWS,
    STACK_WORKERS,
    eventually,
    running_stack,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def onnx_stack(trained_store_dir, tmp_path_factory):
    def publish_pickle_only(stack) -> None:
        # iris version 2: the same spec, published without an ONNX form, in production.
        (iris,) = [spec for spec in demo_specs() if spec.name == IRIS]
        train(iris, ModelStore(stack.store), aliases=("production",), onnx=False)

    with running_stack(
        tmp_path_factory.mktemp("onnx-stack"),
        store_from=trained_store_dir,
        env={"MODEL_SERVICE_RELOAD_INTERVAL": "0.2"},
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
    for _ in range(8 * STACK_WORKERS):
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
    def a_run_from_onnxruntime() -> list[dict] | None:
        answers = [predict(onnx_stack.url, IRIS, IRIS_ROWS) for _ in range(10 * STACK_WORKERS)]
        return answers if all(a["backend"] == "onnxruntime" for a in answers) else None

    answers = eventually(
        a_run_from_onnxruntime, timeout=20, interval=0.02, message="every worker on onnxruntime"
    )
    body = answers[-1]
    assert body["version"] == 2
    assert body["predictions"] == before["predictions"] == IRIS_EXPECTED
    assert body["probabilities"] == same_as(before["probabilities"])
