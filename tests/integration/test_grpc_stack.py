"""The whole local stack with the gRPC server: Nginx -> Gunicorn and gRPC answer from the
same store, and stop() leaves no process behind."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton

from service.localstack import LocalStack, StackError, free_port
from tests.integration.test_serve_cli import modelctl
from tests.support import IRIS, IRIS_EXPECTED, IRIS_ROWS, running_stack

pytestmark = pytest.mark.integration


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def iris_input() -> triton.InferInput:
    rows = np.array(IRIS_ROWS)
    tensor = triton.InferInput("instances", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    return tensor


def test_http_and_grpc_from_one_stack(trained_store_dir, tmp_path):
    pids: dict[str, int] = {}
    workers: list[int] = []
    with running_stack(tmp_path, store_from=trained_store_dir, grpc_port=free_port()) as stack:
        pids = stack.running_pids()
        workers = stack.worker_pids()
        assert set(pids) == {"gunicorn-a", "gunicorn-b", "nginx", "grpc", "supervisord"}
        assert len(workers) == 2
        assert stack.grpc_address == f"127.0.0.1:{stack.grpc_port}"

        ready = requests.get(f"{stack.url}/readyz", timeout=10)
        assert ready.status_code == 200
        assert ready.headers["Server"].startswith("nginx")
        answer = requests.post(
            f"{stack.url}/v1/models/{IRIS}/predict", json={"instances": IRIS_ROWS}, timeout=10
        )
        assert answer.json()["predictions"] == IRIS_EXPECTED

        with triton.InferenceServerClient(stack.grpc_address) as client:
            assert client.is_server_ready() is True
            assert client.is_model_ready(IRIS) is True
            result = client.infer(IRIS, [iris_input()], request_id="stack")
            assert result.get_response().id == "stack"
            assert result.as_numpy("predict").tolist() == [c.encode() for c in IRIS_EXPECTED]
            assert result.as_numpy("predict_proba").tolist() == answer.json()["probabilities"]
        log = (stack.runtime_dir / "grpc.log").read_text()
        assert f"listening on 127.0.0.1:{stack.grpc_port}" in log
        stopped = stack.stop()
    assert [s.split()[0] for s in stopped] == [
        "nginx",
        "grpc",
        "gunicorn-a",
        "gunicorn-b",
        "supervisord",
    ]
    assert pids and workers
    assert not [pid for pid in [*pids.values(), *workers] if pid_alive(pid)]
    assert stack.running_pids() == {}
    assert not list(stack.runtime_dir.glob("*.pid"))
    assert "stopping: in-flight calls get" in (stack.runtime_dir / "grpc.log").read_text()


def test_a_grpc_port_in_use_fails_the_start_and_stops_the_rest(trained_store_dir, tmp_path):
    """The gRPC server exits when its port is taken; start() says so and cleans up."""
    stacks: list[LocalStack] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with (
            pytest.raises(StackError, match="grpc exited during start-up") as caught,
            running_stack(
                tmp_path,
                store_from=trained_store_dir,
                workers=1,
                use_nginx=False,
                grpc_port=taken.getsockname()[1],
                before_start=stacks.append,
            ),
        ):
            pass
    (stack,) = stacks
    assert "cannot start the gRPC server" in str(caught.value)
    assert stack.running_pids() == {}
    assert not list(stack.runtime_dir.glob("*.pid"))


@pytest.mark.parametrize("with_grpc", [True, False], ids=["grpc", "grpc-port-0"])
def test_modelctl_serve_grpc_port(trained_store_dir, tmp_path, with_grpc):
    store = tmp_path / "model_store"
    shutil.copytree(trained_store_dir, store)
    runtime = tmp_path / "run"
    grpc_port = free_port() if with_grpc else 0
    args = ["--store", str(store), "--runtime-dir", str(runtime), "--workers", "1"]
    env = {"MODEL_SERVICE_NGINX_BIN": ""}
    started = modelctl(
        "serve", *args, "--port", str(free_port()), "--grpc-port", str(grpc_port), env=env
    )
    pids = {}
    try:
        assert started.returncode == 0, started.stderr
        pids = {p.stem: int(p.read_text()) for p in runtime.glob("*.pid")}
        assert ("grpc" in pids) == with_grpc
        said = f"gRPC (Open Inference Protocol) at 127.0.0.1:{grpc_port}"
        assert (said in started.stdout) == with_grpc
        if with_grpc:
            with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                result = client.infer(IRIS, [iris_input()])
                assert result.as_numpy("predict").tolist() == [c.encode() for c in IRIS_EXPECTED]
    finally:
        stopped = modelctl("stop", "--runtime-dir", str(runtime))
    assert stopped.returncode == 0
    assert ("grpc (pid" in stopped.stdout) == with_grpc
    assert pids and not [pid for pid in pids.values() if pid_alive(pid)]
