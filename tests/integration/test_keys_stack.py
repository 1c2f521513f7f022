"""API keys on the real stack (Nginx -> 2 Gunicorn workers, and the gRPC server) with every
scope keyed, as `make deploy` sets it: the 401/403 answers through Nginx, a key revoked or
created while it runs taking effect on every worker within seconds, and no key in any log."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests

from service.keys import KeyRing, digest
from service.localstack import free_port
from service.protocols.grpc import open_inference_pb2 as pb
from service.protocols.grpc import open_inference_pb2_grpc as pb_grpc
from tests.sshd import modelctl
from tests.support import IRIS, IRIS_ROW, eventually, running_stack

# Requests in a burst after a change, 8 at a time: with 2 workers, each gets some of them.
SPREAD = 32
RELOAD_DEADLINE_S = 5.0
GATE_KEY = "msk_the-gate-key-of-this-host"


@pytest.fixture(scope="module")
def keyed(trained_store_dir, tmp_path_factory):
    keys: dict[str, str] = {}

    def make_keys(stack) -> None:
        ring = KeyRing(stack.store)
        keys["predict"] = ring.create("predictor", ["predict"])
        keys["read"] = ring.create("reader", ["read"])
        keys["feedback"] = ring.create("labeller", ["feedback"])

    env = {
        "MODEL_SERVICE_OPEN_SCOPES": "",
        "MODEL_SERVICE_RELOAD_INTERVAL": "0.2",
        # The key a deploy's gate uses, given by the host's settings rather than the store.
        "MODEL_SERVICE_GATE_KEY_HASHES": digest(GATE_KEY),
    }
    with running_stack(
        tmp_path_factory.mktemp("keys"),
        store_from=trained_store_dir,
        env=env,
        grpc_port=free_port(),
        before_start=make_keys,
    ) as stack:
        yield stack, keys


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def predict(url: str, headers: dict[str, str]) -> requests.Response:
    # A new connection each time (no Session).
    return requests.post(
        f"{url}/v1/models/{IRIS}/predict",
        json={"instances": [IRIS_ROW]},
        headers=headers,
        timeout=10,
    )


def test_refusals_through_nginx_in_each_protocols_shape(keyed):
    stack, keys = keyed
    url = stack.url
    native = predict(url, {})
    assert native.status_code == 401
    assert native.headers["WWW-Authenticate"] == 'Bearer realm="model-service"'
    assert native.json()["error"]["code"] == "unauthorized"
    v2 = requests.post(f"{url}/v2/models/{IRIS}/infer", json={}, timeout=10)
    assert v2.status_code == 401
    assert "needs a key with scope 'predict'" in v2.json()["error"]
    mlflow = requests.post(
        f"{url}/v1/models/{IRIS}/invocations",
        json={"instances": [IRIS_ROW]},
        headers=bearer(keys["read"]),
        timeout=10,
    )
    assert mlflow.status_code == 403
    assert mlflow.json()["error_code"] == "PERMISSION_DENIED"
    assert predict(url, bearer(keys["predict"])).status_code == 200
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200


def test_feedback_is_refused_without_a_feedback_key(keyed):
    stack, keys = keyed
    served = predict(stack.url, bearer(keys["predict"]))
    label = {"request_id": served.json()["request_id"], "index": 0, "label": "setosa"}
    feedback_url = f"{stack.url}/v1/models/{IRIS}/feedback"
    assert requests.post(feedback_url, json=label, timeout=10).status_code == 401
    refused = requests.post(feedback_url, json=label, headers=bearer(keys["predict"]), timeout=10)
    assert refused.status_code == 403
    accepted = requests.post(feedback_url, json=label, headers=bearer(keys["feedback"]), timeout=10)
    assert accepted.status_code == 200, accepted.text


def test_grpc_refuses_without_a_key_and_serves_with_one(keyed):
    stack, keys = keyed
    request = pb.ModelInferRequest(model_name=IRIS)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(IRIS_ROW)
    with grpc.insecure_channel(stack.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        answer = stub.ModelInfer(
            request, metadata=(("authorization", f"Bearer {keys['predict']}"),), timeout=10
        )
        assert answer.model_name == IRIS


def test_the_rollout_gate_passes_with_the_hosts_gate_key_only(keyed, tmp_path):
    stack, _ = keyed
    refused = subprocess.run(
        [modelctl(), "gate", stack.url, "--timeout", "30"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "/v1/models answered 401" in refused.stderr
    key_file = tmp_path / "gate.key"
    key_file.write_text(GATE_KEY + "\n")
    passed = subprocess.run(
        [modelctl(), "gate", stack.url, "--timeout", "30", "--key-file", str(key_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert passed.returncode == 0, passed.stderr
    assert "every served model answers its golden example" in passed.stdout


def test_a_revoked_key_is_refused_and_a_new_one_served_on_every_worker(keyed):
    stack, _ = keyed
    ring = KeyRing(stack.store)
    key = ring.create("short-lived", ["predict"])
    _wait_all(stack, bearer(key), 200)

    revoked_at = time.monotonic()
    ring.revoke("short-lived")
    took = _wait_all(stack, bearer(key), 401)
    print(f"\nrevocation refused on every worker {took - revoked_at:.2f} s after the file changed")

    created_at = time.monotonic()
    fresh = ring.create("fresh", ["predict"])
    took = _wait_all(stack, bearer(fresh), 200)
    print(f"a new key served on every worker {took - created_at:.2f} s after it was created")


def test_no_key_and_no_digest_reach_any_log(keyed):
    stack, keys = keyed
    # Traffic with every key, valid or not, so each has had its chance to be logged.
    tag = uuid.uuid4().hex[:12]
    ids: set[str] = set()
    for name, key in keys.items():
        ids |= {f"{tag}-{name}-predict", f"{tag}-{name}-list"}
        predict(stack.url, {**bearer(key), "X-Request-ID": f"{tag}-{name}-predict"})
        requests.get(
            f"{stack.url}/v1/models",
            headers={**bearer(key), "X-Request-ID": f"{tag}-{name}-list"},
            timeout=10,
        )
    wrong = bearer("msk_a-wrong-key-that-must-not-be-logged")
    predict(stack.url, {**wrong, "X-Request-ID": "the-last-request"})
    # Every request in both logs: Nginx flushes its access log every second, and each worker
    # its own request log within half a second, so the last request in one worker's lines
    # says nothing of the other's.
    _pids_of(stack, ids | {"the-last-request"})
    access_log = stack.runtime_dir / "nginx-access.log"
    eventually(
        lambda: "the-last-request" in _text(access_log),
        message="the last request in the access log",
    )
    secrets = [*keys.values(), "msk_a-wrong-key-that-must-not-be-logged"]
    secrets += [digest(key) for key in keys.values()]
    base = Path(stack.runtime_dir).parent
    logs = [p for p in base.rglob("*") if p.is_file() and p.name != "keys.yaml"]
    assert any(p.suffix == ".log" for p in logs)
    for path in logs:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{path} holds a key or its digest"
    # What the request log does say: the name of the key each request was accepted with.
    names = set()
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"key"' in line:
                names.add(json.loads(line).get("key"))
    assert {"predictor", "reader"} <= names


def _wait_all(stack, headers: dict[str, str], status: int) -> float:
    """Wait until a burst of SPREAD concurrent requests (so Nginx opens several upstream
    connections) all answer ``status``, and the request log shows that every worker answered
    some of them; the time the burst began."""
    workers = set(stack.worker_pids())
    assert len(workers) == 2

    def a_burst_every_worker_answers() -> float | None:
        began = time.monotonic()
        tag = uuid.uuid4().hex[:12]
        ids = [f"{tag}-{i}" for i in range(SPREAD)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(
                pool.map(lambda i: predict(stack.url, {**headers, "X-Request-ID": i}), ids)
            )
        answered = all(answer.status_code == status for answer in answers)
        return began if answered and _pids_of(stack, set(ids)) == workers else None

    return eventually(
        a_burst_every_worker_answers, RELOAD_DEADLINE_S, message=f"every worker answers {status}"
    )


def _pids_of(stack, request_ids: set[str]) -> set[int]:
    """The worker pids the request log names for these requests, once it names them all
    (lines are flushed within half a second)."""
    log = Path(stack.runtime_dir) / "gunicorn.log"

    def every_request_logged() -> set[int] | None:
        pids, seen = set(), set()
        for line in _text(log).splitlines():
            if line.startswith("{") and '"request_id"' in line:
                entry = json.loads(line)
                if entry.get("request_id") in request_ids:
                    seen.add(entry["request_id"])
                    pids.add(entry["pid"])
        return pids if seen == request_ids else None

    return eventually(every_request_logged, 10, message="every request in the request log")


def _text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""
