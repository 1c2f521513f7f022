"""Through Nginx to Gunicorn and back: exact predictions, JSON errors from both layers,
and workers that stay up whatever they are sent."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from service.runtime.model import load
from service.store import ModelStore
from tests.outputs import same_as
from tests.support import DEMO_MODELS, IRIS, IRIS_ROW, eventually
from tests.test_api import BAD_INPUTS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_predictions_through_nginx_equal_in_process(stack, http, name):
    model = load(ModelStore(stack.store), name, 1)
    rows = np.asarray(model.metadata["golden"]["instances"])
    response = http.post(f"{stack.url}/v1/models/{name}/predict", json={"instances": rows.tolist()})
    assert response.status_code == 200
    assert response.headers["Server"].startswith("nginx")
    body = response.json()
    assert body["backend"] == "onnxruntime"  # the ONNX form, in a worker forked after loading
    assert body["predictions"] == same_as(model.estimator.predict(rows))
    if model.task == "classification":
        assert body["probabilities"] == same_as(model.estimator.predict_proba(rows))


def test_request_id_passes_through_nginx_or_is_made_there(stack, http):
    url = f"{stack.url}/v1/models/{IRIS}/predict"
    kept = http.post(url, json={"instances": [IRIS_ROW]}, headers={"X-Request-ID": "trace-42"})
    assert kept.headers["X-Request-ID"] == "trace-42"
    assert kept.json()["request_id"] == "trace-42"
    made = http.post(url, json={"instances": [IRIS_ROW]})
    # Nginx's $request_id: 32 hex characters, the same one the app saw.
    assert len(made.headers["X-Request-ID"]) == 32
    assert made.json()["request_id"] == made.headers["X-Request-ID"]
    assert "," not in made.headers["X-Request-ID"]  # one header, not two joined


@pytest.mark.parametrize(("body", "content_type", "status", "code", "message"), BAD_INPUTS)
def test_bad_input_through_nginx(stack, http, body, content_type, status, code, message):
    workers_before = sorted(stack.worker_pids())
    data = body if isinstance(body, bytes) else body.encode()
    response = http.post(
        f"{stack.url}/v1/models/{IRIS}/predict", data=data, headers={"Content-Type": content_type}
    )
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]
    assert sorted(stack.worker_pids()) == workers_before


def test_nginx_refuses_an_oversized_body_with_json(stack, http):
    too_big = b'{"instances": [' + b" " * (17 * 1024 * 1024) + b"]}"
    response = http.post(
        f"{stack.url}/v1/models/{IRIS}/predict",
        data=too_big,
        headers={"Content-Type": "application/json", "X-Request-ID": "big-1"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert response.json()["error"]["request_id"] == "big-1"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("post", "/v1/models/no-such-model/predict", 404, "model_not_found"),
        ("post", f"/v1/models/{IRIS}@9/predict", 404, "version_not_found"),
        ("post", f"/v1/models/{IRIS}@canary/predict", 404, "alias_not_found"),
        ("get", f"/v1/models/{IRIS}/predict", 405, "method_not_allowed"),
        ("delete", "/v1/models", 405, "method_not_allowed"),
        ("get", "/nothing/here", 404, "not_found"),
    ],
)
def test_unknown_things_and_wrong_methods(stack, http, method, path, status, code):
    response = http.request(method, stack.url + path, json={"instances": [IRIS_ROW]})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_large_answers_are_gzipped(stack, http):
    rows = [IRIS_ROW] * 1000
    response = http.post(
        f"{stack.url}/v1/models/{IRIS}/predict",
        json={"instances": rows},
        headers={"Accept-Encoding": "gzip"},
        stream=True,
    )
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    raw = response.raw.read()
    assert len(json.loads(gzip.decompress(raw))["predictions"]) == 1000


def test_health_and_models_through_nginx(stack, http):
    assert http.get(f"{stack.url}/healthz").json() == {"status": "ok"}
    assert http.get(f"{stack.url}/readyz").status_code == 200
    names = [m["name"] for m in http.get(f"{stack.url}/v1/models").json()["models"]]
    assert names == sorted(DEMO_MODELS)


def test_nginx_logs_upstream_timing(stack, http):
    http.post(
        f"{stack.url}/v1/models/{IRIS}/predict",
        json={"instances": [IRIS_ROW]},
        headers={"X-Request-ID": "logged-1"},
    )
    log_path = stack.runtime_dir / "nginx-access.log"

    def logged_line() -> str | None:
        text = log_path.read_text() if log_path.exists() else ""
        return next((line for line in text.splitlines() if "rid=logged-1" in line), None)

    # The access log is buffered (flush=1s): the line comes within a second or so.
    line = eventually(logged_line, timeout=5, interval=0.2, message="logged-1 in the access log")
    assert " urt=" in line and " rt=" in line
    # Nginx reaches the Gunicorn instances through their unix sockets, not their ports.
    sockets = [f"unix:{stack.gunicorn_socket(name)}" for name in stack.gunicorn_names]
    assert line.split("upstream=", 1)[1].split()[0] in sockets
