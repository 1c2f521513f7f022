"""`modelctl serve` / `modelctl stop` (what `make run` / `make stop` call): the stack comes up
in the background, answers, and stops exactly the processes it started."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from service.localstack import free_port
from tests.support import IRIS, IRIS_OBJECT, require_nginx

pytestmark = pytest.mark.integration


def modelctl(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def served_store(trained_store_dir, tmp_path):
    store = tmp_path / "model_store"
    shutil.copytree(trained_store_dir, store)
    return store


@pytest.mark.parametrize("with_nginx", [True, False], ids=["nginx", "no-nginx"])
def test_serve_then_stop(served_store, tmp_path, with_nginx):
    if with_nginx:
        require_nginx()
    env = {} if with_nginx else {"MODEL_SERVICE_NGINX_BIN": ""}
    runtime = tmp_path / "run"
    port, grpc_port = free_port(), free_port()
    args = ["--store", str(served_store), "--runtime-dir", str(runtime)]
    started = modelctl(
        "serve",
        *args,
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--workers",
        "2",
        env=env,
    )
    pids = {}
    try:
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        assert f"127.0.0.1:{grpc_port}" in started.stdout
        if not with_nginx:
            first_line = started.stdout.splitlines()[0]
            assert "nginx is not installed" in first_line
            assert "apt-get install -y nginx" in first_line
        pids = {
            p.stem: int(p.read_text())
            for p in runtime.glob("*.pid")
            if p.stem != "nginx" or with_nginx
        }
        response = requests.post(
            f"http://127.0.0.1:{port}/v1/models/{IRIS}/predict",
            json={"instances": [IRIS_OBJECT]},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.json()["predictions"] == ["setosa"]
        assert response.headers["Server"].startswith("nginx" if with_nginx else "gunicorn")
        again = modelctl(
            "serve", *args, "--port", str(free_port()), "--grpc-port", str(free_port()), env=env
        )
        assert again.returncode != 0
        assert "already running" in again.stderr
    finally:
        stopped = modelctl("stop", "--runtime-dir", str(runtime))
    assert stopped.returncode == 0
    assert "gunicorn" in stopped.stdout and "grpc" in stopped.stdout
    assert ("nginx" in stopped.stdout) == with_nginx
    assert pids and not any(pid_alive(pid) for pid in pids.values())
    assert modelctl("stop", "--runtime-dir", str(runtime)).stdout.strip() == "nothing was running"
