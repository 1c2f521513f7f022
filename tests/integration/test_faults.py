"""Faults around the stack: a killed worker is replaced and the new one serves the current
version; with Gunicorn gone, Nginx still answers in JSON."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest
import requests

from service.localstack import LocalStack, free_port
from service.store import ModelStore
from tests.integration.conftest import require_nginx
from tests.integration.test_hot_swap import publish_copy
from tests.test_api import IRIS, IRIS_ROW

pytestmark = pytest.mark.integration


def wait_for(condition, timeout: float = 20.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not true within {timeout}s: {condition.__doc__ or condition}")


@pytest.fixture
def own_stack(trained_store_dir, tmp_path):
    require_nginx()
    store = tmp_path / "model_store"
    shutil.copytree(trained_store_dir, store)
    stack = LocalStack(
        runtime_dir=tmp_path / "run", store=store, port=free_port(), workers=2, use_nginx=True
    )
    stack.start(ready_timeout=90)
    try:
        yield stack
    finally:
        stack.stop()


def test_a_killed_worker_is_replaced_and_serves_the_current_version(own_stack):
    store = ModelStore(own_stack.store)
    # Promote after the master loaded the models: a worker forked now must not serve
    # the master's stale alias.
    version = publish_copy(store, IRIS, "promoted after start")
    store.promote(IRIS, version)
    before = sorted(own_stack.worker_pids())
    victim = before[0]
    os.kill(victim, signal.SIGKILL)

    def replaced():
        """a new worker took the killed one's place"""
        pids = own_stack.worker_pids()
        return len(pids) == len(before) and victim not in pids and pids

    after = wait_for(replaced)
    newcomer = (set(after) - set(before)).pop()
    with requests.Session() as session:
        served_by = {}
        deadline = time.monotonic() + 20
        while newcomer not in served_by and time.monotonic() < deadline:
            response = session.post(
                f"{own_stack.gunicorn_url}/v1/models/{IRIS}/predict",
                json={"instances": [IRIS_ROW]},
                headers={"Connection": "close"},
            )
            assert response.status_code == 200
            pid = _worker_pid_from_log(own_stack, response.headers["X-Request-ID"])
            served_by[pid] = response.json()["version"]
    assert served_by.get(newcomer) == version


def _worker_pid_from_log(stack, request_id: str) -> int | None:
    """The worker that answered a request, from its JSON request-log line."""
    log = stack.runtime_dir / "gunicorn.log"
    for _ in range(50):
        for line in reversed(log.read_text().splitlines()):
            if f'"request_id":"{request_id}"' in line:
                entry = json.loads(line)
                if entry.get("logger") == "service.requests":
                    return int(entry["pid"])
        time.sleep(0.05)
    return None


def test_nginx_answers_json_when_gunicorn_is_gone(own_stack):
    # A crash, not a shutdown: the master and its workers die at once.
    gunicorn = [own_stack.running_pids()["gunicorn"], *own_stack.worker_pids()]
    for pid in gunicorn:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not own_stack.running_pids().get("gunicorn"))
    response = requests.post(
        f"{own_stack.url}/v1/models/{IRIS}/predict",
        json={"instances": [IRIS_ROW]},
        headers={"X-Request-ID": "down-1"},
        timeout=15,
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert response.json()["error"]["request_id"] == "down-1"
