"""Faults under load, through Nginx on loopback: SIGKILL of a worker every 2 s, of a
Gunicorn master, of the gRPC server; promote and rollback every 0.5 s; a model slower to
load than the worker timeout; then a clean stop that reports what died. None of them fails
a request. A stack of one instance and one worker survives that worker's deaths too; with
its supervisord and master gone, Nginx still answers in JSON and the stop says what it found
dead."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from service.localstack import LocalStack, free_port
from service.store import ModelStore
from tests.fleet.load import BoundedLoad
from tests.integration.fault_models import Shifted, SlowToUnpickle
from tests.integration.test_hot_swap import publish_copy
from tests.support import DIABETES, IRIS, IRIS_ROW, eventually, running_stack

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
# Short enough that a model slower to load than it costs the test little time.
WORKER_TIMEOUT = 8
SLOW_LOAD_SECONDS = 12
# A few recycles of each worker during the module's load: each must exit cleanly too.
MAX_REQUESTS = 400
FAULT_SECONDS = 20.0
# Requests a second, all load threads together: steady traffic (2 cores, shared).
RATE = 80.0
# A version's answers are moved this far from version 1's: any answer shows its author.
SHIFT = 1000.0


@pytest.fixture(scope="module")
def stack(trained_store_dir, tmp_path_factory):
    env = {
        "MODEL_SERVICE_RELOAD_INTERVAL": "0.1",
        "MODEL_SERVICE_WORKER_TIMEOUT": str(WORKER_TIMEOUT),
        "MODEL_SERVICE_MAX_REQUESTS": str(MAX_REQUESTS),
        # The workers unpickle tests.integration.fault_models.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    with running_stack(
        tmp_path_factory.mktemp("faults"),
        store_from=trained_store_dir,
        env=env,
        grpc_port=free_port(),
    ) as started:
        assert started.gunicorn_names == ["gunicorn-a", "gunicorn-b"]
        yield started


def iris_load(stack: LocalStack, **options) -> BoundedLoad:
    options.setdefault("rate", RATE)
    options.setdefault("max_seconds", 120)
    return BoundedLoad(
        f"{stack.url}/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}, **options
    )


def report(name: str, load: BoundedLoad, **extra) -> None:
    """The figures of a scenario, for the notes (pytest -s shows them)."""
    print(
        f"\n{name}: sent {load.sent}, failed {len(load.failures)}", extra or "", load.failures[:5]
    )


def test_a_killed_worker_is_replaced_and_serves_the_current_version(stack):
    store = ModelStore(stack.store)
    # Promote after the masters loaded the models: a worker forked now must not serve
    # the master's stale alias.
    version = publish_copy(store, IRIS, "promoted after start")
    store.promote(IRIS, version)
    before = sorted(stack.worker_pids())
    victim = before[0]
    os.kill(victim, signal.SIGKILL)

    def replaced():
        """a new worker took the killed one's place"""
        pids = stack.worker_pids()
        return len(pids) == len(before) and victim not in pids and pids

    after = eventually(replaced)
    newcomer = (set(after) - set(before)).pop()
    served_by = {}
    with requests.Session() as session:

        def the_newcomer_served():
            """the new worker answered a request"""
            for url in stack.gunicorn_urls:
                response = session.post(
                    f"{url}/v1/models/{IRIS}/predict",
                    json={"instances": [IRIS_ROW]},
                    headers={"Connection": "close"},
                )
                assert response.status_code == 200
                pid = _worker_pid_from_log(stack, response.headers["X-Request-ID"])
                served_by[pid] = response.json()["version"]
            return newcomer in served_by

        eventually(the_newcomer_served, timeout=20, interval=0)
    assert served_by.get(newcomer) == version


def _worker_pid_from_log(stack, request_id: str) -> int:
    """The worker that answered a request, from its JSON request-log line (written within
    half a second)."""
    log = stack.runtime_dir / "gunicorn.log"

    def logged_pid() -> int | None:
        for line in reversed(log.read_text().splitlines()):
            if f'"request_id":"{request_id}"' in line:
                entry = json.loads(line)
                if entry.get("logger") == "service.requests":
                    return int(entry["pid"])
        return None

    return eventually(logged_pid, timeout=10, interval=0.05, message=f"{request_id} logged")


def test_a_worker_killed_every_2_seconds_under_load_fails_no_request(stack):
    kills = 0
    with iris_load(stack) as load:
        load.wait_for(20)
        deadline = time.monotonic() + FAULT_SECONDS
        while time.monotonic() < deadline:
            workers = stack.worker_pids()
            if workers:
                kill_quietly(random.choice(workers), signal.SIGKILL)
                kills += 1
            time.sleep(2.0)  # the fault's own pace
        # Until the last kill's replacement has answered too.
        eventually(lambda: len(stack.worker_pids()) == stack.total_workers)
        load.wait_for(20)
    report("worker SIGKILL every 2 s", load, kills=kills)
    assert kills >= FAULT_SECONDS / 2 - 1
    assert load.failures == []
    assert load.sent > RATE * FAULT_SECONDS / 4  # load flowed all along


def kill_quietly(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already replaced
        os.kill(pid, sig)


def test_a_killed_gunicorn_master_and_grpc_server_are_started_again_and_no_request_fails(stack):
    name = stack.gunicorn_names[0]
    master = stack.master_pids()[name]
    grpc = stack.running_pids()["grpc"]
    orphans = [pid for pid in stack.worker_pids() if _parent(pid) == master]
    with iris_load(stack) as load:
        load.wait_for(20)
        os.kill(master, signal.SIGKILL)

        def master_started_again():
            """supervisord started the killed Gunicorn master again"""
            pid = stack.master_pids().get(name)
            return pid not in (None, master) and pid

        started_again = eventually(master_started_again, timeout=90)
        # Its workers did not outlive it (they would hold its port).
        eventually(lambda: not any(_alive(pid) for pid in orphans), timeout=30)
        os.kill(grpc, signal.SIGKILL)
        eventually(lambda: stack.running_pids().get("grpc") not in (None, grpc), timeout=60)
        stack.wait_ready(90)  # both instances, all workers, Nginx, the gRPC server
        load.wait_for(int(RATE * 2))  # and traffic after it
    report("Gunicorn master SIGKILL", load)
    assert started_again != master
    assert load.failures == []


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def publish_variant(store: ModelStore, estimator, description: str) -> int:
    """A new version of the diabetes regressor computing with ``estimator``: served by its
    pickle (no ONNX form) and without version 1's golden outputs."""
    meta = store.metadata(DIABETES, 1)
    meta["description"] = description
    for key in ("golden", "backends"):
        meta.pop(key, None)
    return store.publish(DIABETES, pickle.dumps(estimator), meta)


def test_promote_and_rollback_every_half_second_under_load(stack):
    store = ModelStore(stack.store)
    base = store.load_artifact(DIABETES, 1).estimator
    shifted = publish_variant(store, Shifted(base, SHIFT), "every answer moved by 1000")
    row = store.metadata(DIABETES, 1)["golden"]["instances"][0]
    expected = {1: None, shifted: None}
    first = requests.post(
        f"{stack.url}/v1/models/{DIABETES}@1/predict", json={"instances": [row]}, timeout=10
    )
    expected[1] = first.json()["predictions"][0]
    expected[shifted] = expected[1] + SHIFT

    def computed_by_the_version_it_names(answer: dict) -> str | None:
        version = answer.get("version")
        if version not in expected:
            return f"an answer from version {version}"
        if abs(answer["predictions"][0] - expected[version]) > 1.0:
            return f"version {version} answered {answer['predictions'][0]}"
        return None

    switches = 0
    with BoundedLoad(
        f"{stack.url}/v1/models/{DIABETES}/predict",
        {"instances": [row]},
        rate=RATE,
        max_seconds=120,
        check=computed_by_the_version_it_names,
    ) as load:
        load.wait_for(20)
        started = time.monotonic()
        while time.monotonic() < started + FAULT_SECONDS:
            if switches % 2 == 0:
                store.promote(DIABETES, shifted, force=True, reason="fault test")
            else:
                store.rollback(DIABETES, reason="fault test")
            switches += 1
            # The fault's own pace: a switch every 0.5 s, whatever a switch takes.
            time.sleep(max(0.0, started + switches * 0.5 - time.monotonic()))
        load.wait_for(20)
    report("promote/rollback every 0.5 s", load, switches=switches, versions=dict(load.versions))
    assert switches >= FAULT_SECONDS / 0.5 - 2
    assert load.failures == []
    assert set(load.versions) == {1, shifted}
    if switches % 2:
        store.rollback(DIABETES, reason="fault test done")


def test_a_model_slower_to_load_than_the_worker_timeout_boots_no_loop(stack):
    store = ModelStore(stack.store)
    log = stack.runtime_dir / "gunicorn.log"
    log_from = log.stat().st_size
    base = store.load_artifact(DIABETES, 1).estimator
    slow = publish_variant(store, SlowToUnpickle(base, SLOW_LOAD_SECONDS), "slow to unpickle")
    store.promote(DIABETES, slow, force=True, reason="slow load")
    loading_since = time.monotonic()

    def says_it_is_loading():
        """/readyz answers 503 and says the slow version is loading"""
        answer = requests.get(f"{stack.url}/readyz", timeout=10)
        model = answer.json().get("models", {}).get(DIABETES, {})
        return answer.status_code == 503 and "loading" in model.get("reason", "") and model

    model = eventually(says_it_is_loading, timeout=10)
    assert model["wanted"] == slow and f"{DIABETES}@{slow}" in model["reason"]
    # A worker forked now must catch up with the store: before, it loaded the slow version
    # in its first request and Gunicorn killed it, and the next, and so on.
    victim = stack.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: len(stack.worker_pids()) == stack.total_workers and stack.worker_pids())
    with requests.Session() as session:

        def serves_the_slow_version():
            """every answer comes from the slow version"""
            answers = [
                session.post(
                    f"{stack.url}/v1/models/{DIABETES}/predict",
                    json={"instances": [store.metadata(DIABETES, 1)["golden"]["instances"][0]]},
                    timeout=30,
                )
                for _ in range(4)
            ]
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            return all(a.json()["version"] == slow for a in answers)

        eventually(serves_the_slow_version, timeout=SLOW_LOAD_SECONDS * 4)
    assert time.monotonic() - loading_since >= SLOW_LOAD_SECONDS
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200
    with open(log, encoding="utf-8", errors="replace") as handle:
        handle.seek(log_from)
        since = handle.read()
    assert "WORKER TIMEOUT" not in since
    assert "aborted (timeout)" not in since
    # The replacement of the one killed, and no other (but a max_requests recycle).
    assert since.count("Booting worker") == 1 + since.count("Autorestarting worker")
    store.rollback(DIABETES, reason="slow load done")


def modelctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_stop_reports_what_died_and_every_worker_exits_cleanly(stack):
    log = stack.runtime_dir / "gunicorn.log"
    # At least one max_requests recycle (a graceful worker exit) before the stop.
    with requests.Session() as session:
        for _ in range(MAX_REQUESTS * 3):
            if "Autorestarting worker" in log.read_text(errors="replace"):
                break
            session.post(f"{stack.url}/v1/models/{IRIS}/predict", json={"instances": [IRIS_ROW]})
    grpc = stack.running_pids()["grpc"]
    os.kill(grpc, signal.SIGKILL)
    eventually(lambda: stack.running_pids().get("grpc") not in (None, grpc), timeout=60)
    stack.wait_ready(90)  # a server stopped before it is up has no handler for SIGTERM yet
    pids = [*stack.running_pids().values(), *stack.worker_pids()]
    stopped = modelctl("stop", "--runtime-dir", str(stack.runtime_dir))
    assert stopped.returncode == 0, stopped.stderr
    out = stopped.stdout
    # What was killed, and supervisord started again, before the stop.
    assert "grpc exited at" in out and "(terminated by SIGKILL) and was started again" in out
    last = out.splitlines()[-1]
    for name in ("nginx", "grpc", "gunicorn-a", "gunicorn-b", "supervisord"):
        assert f"{name} (pid " in last, out
    assert not [pid for pid in pids if _alive(pid)]
    text = log.read_text(errors="replace")
    assert "Autorestarting worker" in text
    assert "std::system_error" not in text
    assert "SIGABRT" not in text and "Aborted" not in text
    assert "exited with code" not in text
    # Worker deaths Gunicorn saw: only the SIGKILLs sent here.
    signalled = [line for line in text.splitlines() if "was sent" in line]
    assert all("SIGKILL" in line for line in signalled), signalled
    supervisor = stack.supervisor_log.read_text()
    for name in ("gunicorn-a", "gunicorn-b", "grpc"):
        assert f"stopped: {name} (exit status 0)" in supervisor, supervisor


def test_with_supervisord_gone_nginx_answers_json_and_stop_says_what_died(
    trained_store_dir, tmp_path
):
    with running_stack(tmp_path, store_from=trained_store_dir, workers=1) as stack:
        assert stack.gunicorn_names == ["gunicorn"]
        # One instance, listed twice upstream: a request whose worker died is passed to the
        # same instance again, where the worker Gunicorn forks in its place takes it.
        with iris_load(stack) as load:
            load.wait_for(20)
            for _ in range(3):
                kill_quietly(stack.worker_pids()[0], signal.SIGKILL)
                time.sleep(1.5)  # the fault's own pace
            eventually(lambda: len(stack.worker_pids()) == 1)
            load.wait_for(20)
        report("one instance, its one worker SIGKILLed 3 times", load)
        assert load.failures == []
        pids = stack.running_pids()
        workers = stack.worker_pids()
        # A crash of everything but Nginx: nothing is left to start Gunicorn again.
        os.kill(pids["supervisord"], signal.SIGKILL)
        os.kill(pids["gunicorn"], signal.SIGKILL)
        # Its worker leaves with it (it would keep the port otherwise).
        eventually(lambda: not any(_alive(pid) for pid in workers), timeout=30)
        response = requests.post(
            f"{stack.url}/v1/models/{IRIS}/predict",
            json={"instances": [IRIS_ROW]},
            headers={"X-Request-ID": "down-1"},
            timeout=15,
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "upstream_unavailable"
        assert response.json()["error"]["request_id"] == "down-1"
        stopped = modelctl("stop", "--runtime-dir", str(stack.runtime_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert "supervisord was not running" in stopped.stdout
    assert "gunicorn was not running (exited" in stopped.stdout
    assert stopped.stdout.splitlines()[-1].startswith(f"stopped nginx (pid {pids['nginx']})")
    assert stack.running_pids() == {}
