"""service.client.ModelClient against the real stack (Gunicorn behind Nginx) and against a
tiny scripted HTTP server for retries; service.load_model for embedding, without Flask."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import service
from service.client import (
    BadRequestError,
    ClientError,
    ConnectionFailed,
    InvalidInputError,
    ModelClient,
    ModelNotFoundError,
    PayloadTooLargeError,
    ProbabilitiesUnavailable,
    ServerUnavailableError,
)
from service.errors import AliasNotFound, IntegrityError, InvalidInput, ModelNotFound
from service.localstack import free_port
from service.runtime.model import load
from service.store import ModelStore
from tests.outputs import same_as
from tests.support import DEMO_MODELS, IRIS, IRIS_EXPECTED, IRIS_ROWS, running_stack

MAX_INSTANCES = 50


# -- against the real stack -----------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(trained_store_dir, tmp_path_factory):
    with running_stack(
        tmp_path_factory.mktemp("client-stack"),
        store_from=trained_store_dir,
        env={"MODEL_SERVICE_MAX_INSTANCES": str(MAX_INSTANCES)},
    ) as started:
        yield started


@pytest.fixture
def client(stack):
    with ModelClient(stack.url, retries=1, backoff=0.05) as client:
        yield client


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_predict_equals_the_estimator_in_process(stack, client, name):
    model = load(ModelStore(stack.store), name, 1)
    rows = np.asarray(model.metadata["golden"]["instances"])
    assert client.predict(name, rows.tolist()) == same_as(model.estimator.predict(rows))
    assert client.predict(f"{name}@1", rows) == same_as(model.estimator.predict(rows))
    if model.has_proba:
        assert client.predict_proba(name, rows) == same_as(model.estimator.predict_proba(rows))
    else:
        with pytest.raises(ProbabilitiesUnavailable, match=f"{name}@1 gives no probabilities"):
            client.predict_proba(name, rows)


@pytest.mark.integration
def test_objects_keyed_by_feature_name(client):
    model = client.model(IRIS)
    objects = [dict(zip(model["features"], row, strict=True)) for row in IRIS_ROWS]
    assert client.predict(f"{IRIS}@production", objects) == IRIS_EXPECTED
    probabilities = client.predict_proba(IRIS, objects)
    assert len(probabilities) == len(IRIS_ROWS)
    assert len(probabilities[0]) == len(model["classes"])
    assert model["classes"][int(np.argmax(probabilities[1]))] == "virginica"


@pytest.mark.integration
def test_models_and_model(client):
    listing = client.models()
    assert {m["name"] for m in listing} == set(DEMO_MODELS)
    details = client.model(IRIS)
    assert details["name"] == IRIS
    assert details["classes"] == ["setosa", "versicolor", "virginica"]
    assert details["metadata"]["name"] == IRIS


@pytest.mark.integration
def test_unknown_model_is_a_model_not_found_error_with_the_servers_message(stack):
    # A long backoff: were a 404 retried, this would take seconds.
    slow = ModelClient(stack.url, retries=3, backoff=2.0)
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as raised:
        slow.predict("no-such-model", IRIS_ROWS)
    assert time.monotonic() - started < 1.5
    error = raised.value
    assert error.status == 404
    assert error.code == "model_not_found"
    assert error.message == "no model named 'no-such-model' is served"
    assert error.details == {"model": "no-such-model"}
    assert error.body["error"]["request_id"]
    with pytest.raises(ModelNotFoundError, match="has no version 9"):
        slow.predict(f"{IRIS}@9", IRIS_ROWS)


@pytest.mark.integration
def test_a_bad_row_is_an_invalid_input_error_with_details(client):
    with pytest.raises(InvalidInputError) as raised:
        client.predict(IRIS, [IRIS_ROWS[0], [5.1, "wide", 1.4, None]])
    error = raised.value
    assert isinstance(error, ClientError)
    assert (error.status, error.code) == (422, "invalid_input")
    assert error.message.startswith("instance 1, feature 'sepal_width_cm': expected a number")
    assert error.details == [
        {"instance": 1, "feature": "sepal_width_cm", "problem": "expected a number, got a string"},
        {
            "instance": 1,
            "feature": "petal_width_cm",
            "problem": "is null, but this feature does not allow missing values",
        },
    ]


@pytest.mark.integration
def test_too_many_instances_and_bad_names(client):
    with pytest.raises(PayloadTooLargeError) as raised:
        client.predict(IRIS, IRIS_ROWS * MAX_INSTANCES)
    assert raised.value.status == 413 and raised.value.code == "too_many_instances"
    assert raised.value.details == {
        "instances": len(IRIS_ROWS) * MAX_INSTANCES,
        "max_instances": MAX_INSTANCES,
    }
    with pytest.raises(BadRequestError) as raised:
        client.model("Not_A_Name")
    assert raised.value.status == 400 and raised.value.code == "invalid_model_name"


@pytest.mark.integration
def test_an_api_key_does_not_get_in_the_way_of_predictions(stack):
    with ModelClient(stack.url, api_key="some-key") as keyed:
        assert keyed.predict(IRIS, IRIS_ROWS) == IRIS_EXPECTED


# -- retries, against a closed port and a scripted server ---------------------------------


def test_connection_failed_after_every_attempt_with_backoff():
    port = free_port()  # bound, then closed: nothing listens there
    client = ModelClient(f"http://127.0.0.1:{port}", retries=3, backoff=0.1, timeout=2)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as raised:
        client.predict(IRIS, IRIS_ROWS)
    elapsed = time.monotonic() - started
    assert raised.value.attempts == 4
    assert raised.value.status is None
    assert "after 4 attempts" in raised.value.message
    # Waits of 0.1, 0.2 and 0.4 s between the four attempts; refusals themselves are instant.
    assert 0.7 <= elapsed < 0.7 + 1.5

    no_retry = ModelClient(f"http://127.0.0.1:{port}", retries=0, backoff=5.0)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as raised:
        no_retry.models()
    assert raised.value.attempts == 1
    assert time.monotonic() - started < 1.0


class ScriptedServer:
    """Answers requests with the next (status, body) of a script, the last one forever,
    and records the path and headers of each request."""

    def __init__(self, script: list[tuple[int, object]]):
        self.script = list(script)
        self.requests: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                recorder.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                    }
                )
                status, answer = (
                    recorder.script.pop(0) if len(recorder.script) > 1 else recorder.script[0]
                )
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                kind = "text/html" if isinstance(answer, str) else "application/json"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()


UNAVAILABLE = {"error": {"code": "model_not_ready", "message": "loading", "request_id": "r1"}}
PREDICTED = {"model": IRIS, "version": 1, "predictions": IRIS_EXPECTED}


def test_503_is_retried_with_backoff_then_succeeds():
    script = [(503, UNAVAILABLE), (503, UNAVAILABLE), (200, PREDICTED)]
    with ScriptedServer(script) as server:
        client = ModelClient(server.url, retries=3, backoff=0.1)
        started = time.monotonic()
        assert client.predict(IRIS, IRIS_ROWS) == IRIS_EXPECTED
        elapsed = time.monotonic() - started
    assert len(server.requests) == 3
    assert all(r["path"] == f"/v1/models/{IRIS}/predict" for r in server.requests)
    assert all(r["body"] == {"instances": IRIS_ROWS} for r in server.requests)
    assert 0.3 <= elapsed < 0.3 + 1.5  # waited 0.1 then 0.2


def test_503_after_every_retry_is_a_server_unavailable_error():
    with ScriptedServer([(503, UNAVAILABLE)]) as server:
        client = ModelClient(server.url, retries=2, backoff=0.01)
        with pytest.raises(ServerUnavailableError) as raised:
            client.models()
    assert len(server.requests) == 3
    assert (raised.value.status, raised.value.code) == (503, "model_not_ready")
    assert raised.value.message == "loading"


def test_a_proxys_502_page_is_retried_and_kept_as_text():
    server = ScriptedServer([(502, "<html>Bad Gateway</html>")])
    with server, pytest.raises(ServerUnavailableError) as raised:
        ModelClient(server.url, retries=1, backoff=0.01).models()
    assert len(server.requests) == 2
    assert raised.value.status == 502 and raised.value.code is None
    assert raised.value.body == "<html>Bad Gateway</html>"


def test_422_is_not_retried():
    bad = {
        "error": {
            "code": "invalid_input",
            "message": "instance 0: has 3 values, the model takes 4",
            "details": [{"instance": 0, "feature": None, "problem": "has 3 values"}],
            "request_id": "r2",
        }
    }
    with ScriptedServer([(422, bad), (200, PREDICTED)]) as server:
        client = ModelClient(server.url, retries=3, backoff=0.01)
        with pytest.raises(InvalidInputError) as raised:
            client.predict(IRIS, [[1, 2, 3]])
    assert len(server.requests) == 1
    assert raised.value.details == bad["error"]["details"]
    assert raised.value.body == bad


def test_mlflow_shaped_errors_are_read_too():
    mlflow_error = {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no model named 'x'"}
    server = ScriptedServer([(404, mlflow_error)])
    with server, pytest.raises(ModelNotFoundError) as raised:
        ModelClient(server.url).model("x")
    assert raised.value.code == "RESOURCE_DOES_NOT_EXIST"
    assert raised.value.message == "no model named 'x'"


def test_the_api_key_is_sent_as_a_bearer_token():
    with ScriptedServer([(200, {"models": []})]) as server:
        assert ModelClient(server.url, api_key="k3y-123").models() == []
        assert ModelClient(server.url).models() == []
    keyed, anonymous = server.requests
    assert keyed["headers"]["Authorization"] == "Bearer k3y-123"
    assert "Authorization" not in anonymous["headers"]


def test_model_refs_with_versions_and_aliases_are_sent_in_the_path():
    with ScriptedServer([(200, PREDICTED)]) as server:
        client = ModelClient(server.url + "/")
        client.predict(f"{IRIS}@staging", IRIS_ROWS)
        client.model(IRIS)
    assert [r["path"] for r in server.requests] == [
        f"/v1/models/{IRIS}@staging/predict",
        f"/v1/models/{IRIS}",
    ]


def test_settings_are_checked():
    with pytest.raises(ValueError):
        ModelClient("http://127.0.0.1:1", retries=-1)
    with pytest.raises(ValueError):
        ModelClient("http://127.0.0.1:1", timeout=0)


# -- embedding: service.load_model ------------------------------------------------------------


def test_load_model_predicts_like_the_runtime(store_dir):
    model = service.load_model(f"{IRIS}@production", store=store_dir)
    reference = load(ModelStore(store_dir), IRIS, 1)
    assert (model.name, model.version) == (IRIS, 1)
    prediction = model.predict(IRIS_ROWS)
    assert prediction.predictions == IRIS_EXPECTED
    assert prediction.predictions == same_as(reference.estimator.predict(np.array(IRIS_ROWS)))
    assert prediction.probabilities == same_as(reference.estimator.predict_proba(IRIS_ROWS))
    with pytest.raises(InvalidInput, match="has 3 values, the model takes 4"):
        model.predict([[1.0, 2.0, 3.0]])


def test_load_model_resolves_versions_and_aliases(store, store_dir):
    store.promote(IRIS, 1, alias="staging")
    assert service.load_model(f"{IRIS}@1", store=store_dir).version == 1
    assert service.load_model(f"{IRIS}@staging", store=str(store_dir)).version == 1
    assert service.load_model(IRIS, store=store_dir).version == 1
    with pytest.raises(AliasNotFound):
        service.load_model(f"{IRIS}@canary", store=store_dir)
    with pytest.raises(ModelNotFound):
        service.load_model("no-such-model", store=store_dir)


def test_load_model_store_defaults_to_the_setting(store_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_SERVICE_STORE", str(store_dir))
    assert service.load_model(IRIS).name == IRIS
    monkeypatch.delenv("MODEL_SERVICE_STORE")
    monkeypatch.chdir(tmp_path)  # holds store_dir's copy as ./model_store
    assert (tmp_path / "model_store").is_dir()
    assert service.load_model(IRIS).name == IRIS
    monkeypatch.chdir(tmp_path / "model_store")  # no ./model_store here
    with pytest.raises(ModelNotFound):
        service.load_model(IRIS)


def test_load_model_refuses_a_pickle_whose_sha256_differs(store_dir):
    pickle_path = store_dir / IRIS / "1" / "model.pkl"
    pickle_path.write_bytes(pickle_path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="sha256"):
        service.load_model(IRIS, store=store_dir)


def test_load_model_and_the_client_do_not_import_flask(store_dir):
    code = (
        "import sys, service, service.client\n"
        f"m = service.load_model('{IRIS}@production', store={str(store_dir)!r})\n"
        "print(m.predict([[5.1, 3.5, 1.4, 0.2]]).predictions[0])\n"
        "print(sorted(k for k in ('flask', 'werkzeug') if k in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.splitlines() == ["setosa", "[]"]
