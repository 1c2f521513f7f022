"""Shadow traffic: a share of an experiment's requests also runs on a candidate, off the
request path. A failing or slow candidate never changes a primary answer or its status;
what the candidate does is recorded (agreement, differences, errors, drops)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pickle
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from service import create_app
from service.config import Settings
from service.monitoring import shadow_record
from service.runtime import hooks, shadow
from service.runtime.registry import ModelRegistry
from service.store import ModelRef, ModelStore
from service.store.experiments import Shadow, Variant
from tests.integration.fault_models import BusyRows, Failing, OneLabel, Shifted, SlowRows
from tests.support import DIABETES, IRIS, eventually, running_stack

SHIFT = 3.0
# Version 1 may serve through onnxruntime (float32), its candidates through their pickles.
FLOAT32 = 0.01
# Bounds on conditions, not sleeps: the shadow processes start and import at the lowest
# priority, which on a machine busy with other tests can take tens of seconds.
WAIT = 90.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def publish_candidate(store: ModelStore, name: str, estimator, description: str) -> int:
    """A new version of ``name`` computing with ``estimator``, served by its pickle (no
    ONNX form) and without the golden outputs of version 1."""
    meta = store.metadata(name, 1)
    meta["description"] = description
    for key in ("golden", "backends"):
        meta.pop(key, None)
    return store.publish(name, pickle.dumps(estimator), meta)


def base_of(store: ModelStore, name: str):
    return store.load_artifact(name, 1).estimator


def rows_of(store: ModelStore, name: str, count: int) -> list:
    points = store.metadata(name, 1)["golden"]["instances"]
    return [points[i % len(points)] for i in range(count)]


def start_shadow(store: ModelStore, name: str, candidate: int, share: float = 1.0):
    return store.start_experiment(
        name, [Variant("production", 100)], shadow=Shadow(str(candidate), share)
    )


# -- the runner on its own: the registry, and the assignment set as routing sets it ----------


@pytest.fixture
def registry(store, tmp_path):
    settings = Settings.from_mapping(
        {"store": store.root, "reload_interval": 0.1, "state_dir": tmp_path / "monitoring"}
    )
    found = ModelRegistry(store, settings)
    found.refresh()
    yield found
    found.stop()


@pytest.fixture
def outcomes(monkeypatch):
    # Only the runner of the test observes: not one an app built earlier installed.
    monkeypatch.setattr(shadow, "_active", None)
    seen: list[shadow.ShadowOutcome] = []
    shadow.outcome_listeners.append(seen.append)
    yield seen
    shadow.outcome_listeners.remove(seen.append)


def predict_shadowed(runner: shadow.ShadowRunner, model, rows, candidate: int):
    """model.predict as a request routed to an experiment with a drawn shadow."""
    token = hooks.assignment.set(
        hooks.Assignment("exp-1", "production", model.version, str(candidate))
    )
    hooks.add_observer(runner.observe)
    try:
        return model.predict(rows)
    finally:
        hooks.remove_observer(runner.observe)
        hooks.assignment.reset(token)


def test_a_failing_candidate_is_recorded_and_the_answer_is_the_primarys(store, registry, outcomes):
    failing = publish_candidate(store, DIABETES, Failing(base_of(store, DIABETES)), "fails")
    runner = shadow.ShadowRunner(registry)
    primary = registry.get(ModelRef(DIABETES, alias="production"))
    rows = rows_of(store, DIABETES, 3)
    alone = primary.predict(rows).predictions
    try:
        shadowed = predict_shadowed(runner, primary, rows, failing).predictions
        assert runner.drain(WAIT)
    finally:
        runner.stop()
    assert shadowed == alone
    [outcome] = outcomes
    assert (outcome.error, outcome.candidate_version, outcome.rows) == (
        shadow.EXCEPTION,
        failing,
        0,
    )


def test_a_slow_candidate_never_blocks_and_a_full_queue_drops(store, registry, outcomes):
    slow = publish_candidate(store, DIABETES, SlowRows(base_of(store, DIABETES), 1.0), "slow")
    runner = shadow.ShadowRunner(registry, queue_size=1)
    primary = registry.get(ModelRef(DIABETES, alias="production"))
    rows = rows_of(store, DIABETES, 1)
    alone = primary.predict(rows).predictions
    started = time.perf_counter()
    try:
        answers = [predict_shadowed(runner, primary, rows, slow).predictions for _ in range(5)]
        seconds = time.perf_counter() - started
        # One in the thread (a second), one queued, three dropped; none waited.
        assert seconds < 0.5
        assert answers == [alone] * 5
        assert runner.dropped >= 3
        assert runner.drain(WAIT)
    finally:
        runner.stop()
    assert runner.runs == 5 - runner.dropped
    assert all(o.error is None and abs(o.differences[0]) < FLOAT32 for o in outcomes)


def candidate_of(runner: shadow.ShadowRunner) -> int:
    """The pid of the candidate process under the runner's own shadow process."""
    return eventually(lambda: children_of({runner.link.own_pid}), WAIT, message="candidate")[0]


def test_a_candidate_past_the_timeout_is_stopped_and_the_work_behind_it_still_runs(store, registry):
    slow = publish_candidate(store, DIABETES, SlowRows(base_of(store, DIABETES), 0.5), "slow")
    runner = shadow.ShadowRunner(registry, timeout=0.2)
    primary = registry.get(ModelRef(DIABETES, alias="production"))
    rows = rows_of(store, DIABETES, 1)
    work = shadow.ShadowWork(primary, "exp-1", str(slow), primary.validate(rows), [1.0])
    seen: list[shadow.ShadowOutcome] = []
    shadow.outcome_listeners.append(seen.append)
    try:
        # A new candidate has the time to load the version: its first answer comes, late.
        first = runner.run(work)
        loaded = candidate_of(runner)
        # Then it is killed mid-run (a thread could not have been) ...
        second = runner.run(work)
        # ... and a new one takes the next piece.
        third = runner.run(work)
        restarted = candidate_of(runner)
        # Two pieces out at once: the first stops its candidate, the second still runs.
        runner._submit(work)
        runner._submit(work)
        assert runner.drain(WAIT)
    finally:
        shadow.outcome_listeners.remove(seen.append)
        runner.stop()
    assert [o.error for o in (first, second, third, *seen)] == [shadow.TIMEOUT] * 5
    # A candidate that finished late names its version and its time; one stopped mid-run
    # by the shadow process names none (it never answered).
    assert (first.candidate_version, third.candidate_version) == (slow, slow)
    assert first.seconds >= 0.5 and third.seconds >= 0.5
    assert second.candidate_version is None
    assert restarted != loaded
    assert sorted(o.candidate_version for o in seen if o.candidate_version) == [slow]
    assert runner.dropped == 0


def test_the_candidate_computes_at_the_lowest_priority_and_the_worker_runs_no_thread(
    store, registry, monkeypatch
):
    busy = publish_candidate(store, DIABETES, BusyRows(base_of(store, DIABETES), 0.01), "busy")
    seen: list[shadow.ShadowOutcome] = []
    # Only this test's listener: none that would start a thread of its own (a recorder).
    monkeypatch.setattr(shadow, "outcome_listeners", [seen.append])
    monkeypatch.setattr(shadow, "drop_listeners", [])
    runner = shadow.ShadowRunner(registry)
    primary = registry.get(ModelRef(DIABETES, alias="production"))
    rows = rows_of(store, DIABETES, 1)
    threads = set(threading.enumerate())
    try:
        for _ in range(3):
            predict_shadowed(runner, primary, rows, busy)
        assert runner.drain(WAIT)
        # Both shadow processes behind every request of the host.
        assert os.getpriority(os.PRIO_PROCESS, runner.link.own_pid) == 19
        assert os.getpriority(os.PRIO_PROCESS, candidate_of(runner)) == 19
        # Nothing of the shadow's runs in the worker between its requests.
        assert set(threading.enumerate()) - threads == set()
    finally:
        runner.stop()
    assert [o.error for o in seen] == [None] * 3
    assert all(o.seconds >= 0.01 for o in seen)


def test_agreement_and_differences_are_compared_in_numpy(store, registry, outcomes):
    iris = registry.get(ModelRef(IRIS, alias="production"))
    label = iris.classes[0]
    one_label = publish_candidate(store, IRIS, OneLabel(base_of(store, IRIS), label), "one")
    shifted = publish_candidate(store, DIABETES, Shifted(base_of(store, DIABETES), SHIFT), "+3")
    runner = shadow.ShadowRunner(registry)
    rows = rows_of(store, IRIS, 7)
    served = iris.predict(rows)
    work = shadow.ShadowWork(iris, "exp-1", str(one_label), iris.validate(rows), served.predictions)
    outcome = runner.run(work)
    assert outcome.rows == 7
    assert outcome.agreed == sum(p == label for p in served.predictions)
    diabetes = registry.get(ModelRef(DIABETES, alias="production"))
    rows = rows_of(store, DIABETES, 4)
    served = diabetes.predict(rows)
    work = shadow.ShadowWork(
        diabetes, "exp-1", str(shifted), diabetes.validate(rows), served.predictions
    )
    outcome = runner.run(work)
    assert np.allclose(outcome.differences, SHIFT, atol=FLOAT32)
    # The candidate that answered is no candidate: nothing to compare.
    work = shadow.ShadowWork(diabetes, "exp-1", "production", work.model_input, [])
    assert runner.run(work) is None
    missing = shadow.ShadowWork(diabetes, "exp-1", "99", work.model_input, served.predictions)
    assert runner.run(missing).error == shadow.UNAVAILABLE


# -- through the app: routing, the runner, the recorder, /metrics and the admin route ---------

ADMIN_KEY = "shadow-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def app(store_dir, tmp_path):
    app = create_app(
        {
            "store": store_dir,
            "reload_interval": 0.1,
            "state_dir": tmp_path / "monitoring",
            "admin_key_hashes": (hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),),
        }
    )
    yield app
    app.extensions["model_service"].registry.stop()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of /metrics text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{([^}]*)\} (\S+)", line)
        if match and match[1] == name:
            found = ",".join(sorted(match[2].split(",")))
            if found == wanted:
                return float(match[3])
    return 0.0


def metrics_text(client) -> str:
    return client.get("/metrics").get_data(as_text=True)


def grown(before: str, after: str, name: str, **labels: str) -> float:
    """How much a sample grew: counters are the process's, over every test."""
    return metric(after, name, **labels) - metric(before, name, **labels)


def applied(app, name: str):
    registry = app.extensions["model_service"].registry

    def experiment_applies():
        registry.refresh()
        return registry.experiment(name)

    return eventually(experiment_applies, WAIT)


def post_rows(client, ref: str, rows) -> list:
    answers = []
    for row in rows:
        response = client.post(f"/v1/models/{ref}/predict", json={"instances": [row]})
        assert response.status_code == 200, response.get_json()
        answers.append(response.get_json()["predictions"])
    return answers


def test_through_the_app_agreement_differences_and_errors_are_recorded(app, client, store):
    shifted = publish_candidate(store, DIABETES, Shifted(base_of(store, DIABETES), SHIFT), "+3")
    iris = app.extensions["model_service"].registry.get(ModelRef(IRIS, alias="production"))
    label = iris.classes[0]
    one_label = publish_candidate(store, IRIS, OneLabel(base_of(store, IRIS), label), "one")
    before = metrics_text(client)
    start_shadow(store, DIABETES, shifted)
    iris_experiment = start_shadow(store, IRIS, one_label)
    applied(app, DIABETES)
    applied(app, IRIS)
    diabetes_rows, iris_rows = rows_of(store, DIABETES, 10), rows_of(store, IRIS, 12)
    assert post_rows(client, DIABETES, diabetes_rows) == post_rows(
        client, f"{DIABETES}@production", diabetes_rows
    )
    served = post_rows(client, IRIS, iris_rows)
    assert served == post_rows(client, f"{IRIS}@production", iris_rows)
    assert shadow.active().drain(WAIT)

    settings = app.extensions["model_service"].settings
    # What the app's recorder counted, written first (as its admin route does).
    recorder = app.extensions["model_service.monitoring"].shadow
    [regressor] = shadow_record.status(settings, DIABETES, recorder=recorder)
    assert (regressor["runs"], regressor["rows"], regressor["candidate_version"]) == (
        10,
        10,
        shifted,
    )
    assert regressor["difference"]["mean"] == pytest.approx(SHIFT, abs=FLOAT32)
    assert regressor["difference"]["std"] == pytest.approx(0.0, abs=FLOAT32)
    [classifier] = shadow_record.status(settings, IRIS, iris_experiment.id, recorder=recorder)
    agreed = sum(answer == [label] for answer in served)
    assert (classifier["rows"], classifier["agreed"]) == (12, agreed)
    assert classifier["agreement"] == pytest.approx(agreed / 12)
    low, high = classifier["agreement_interval"]
    assert low <= agreed / 12 <= high
    # Two hosts' sums add up: twice the rows, the same agreement, a narrower interval.
    host = shadow_record.totals(settings, IRIS, iris_experiment.id)
    [fleet] = [shadow_record.figures(row) for row in shadow_record.merge(host, host)]
    assert (fleet["rows"], fleet["agreement"]) == (24, classifier["agreement"])
    assert fleet["agreement_interval"][1] - fleet["agreement_interval"][0] < high - low
    route = f"/v1/admin/experiments/{IRIS}/shadow"
    assert client.get(route).status_code == 401
    answer = client.get(route, headers=ADMIN).get_json()
    as_json = json.loads(json.dumps(classifier))
    assert (answer["experiment"], answer["candidates"]) == (iris_experiment.id, [as_json])

    after = metrics_text(client)
    labels = {"model": IRIS, "candidate": str(one_label)}
    assert grown(before, after, "model_service_shadow_rows_total", **labels) == 12
    assert grown(before, after, "model_service_shadow_agreed_rows_total", **labels) == agreed
    labels = {"model": DIABETES, "candidate": str(shifted)}
    assert grown(before, after, "model_service_shadow_runs_total", **labels) == 10
    assert grown(before, after, "model_service_shadow_difference_count", **labels) == 10
    # Signed buckets (no _sum: OpenMetrics has none for them): every one above 0.
    assert 'le="0.0"' in after
    assert grown(before, after, "model_service_shadow_difference_bucket", **labels, le="0.0") == 0


def test_through_the_app_a_failing_candidate_changes_no_answer(app, client, store):
    failing = publish_candidate(store, DIABETES, Failing(base_of(store, DIABETES)), "fails")
    before = metrics_text(client)
    start_shadow(store, DIABETES, failing)
    applied(app, DIABETES)
    rows = rows_of(store, DIABETES, 6)
    assert post_rows(client, DIABETES, rows) == post_rows(client, f"{DIABETES}@production", rows)
    assert shadow.active().drain(WAIT)
    [entry] = app.extensions["model_service.monitoring"].shadow_totals(DIABETES)
    entry = shadow_record.figures(entry)
    assert (entry["runs"], entry["errors"][shadow.EXCEPTION], entry["error_rate"]) == (6, 6, 1.0)
    labels = {"model": DIABETES, "candidate": str(failing), "kind": shadow.EXCEPTION}
    assert grown(before, metrics_text(client), "model_service_shadow_errors_total", **labels) == 6


# -- a real stack: Nginx -> Gunicorn, two workers -------------------------------------------


def proc_stat(pid: int) -> tuple[int, int, bytes]:
    """(parent pid, niceness, command line) of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[16]), Path(f"/proc/{pid}/cmdline").read_bytes()


def children_of(parents: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if proc_stat(int(entry.name))[0] in parents:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue  # gone meanwhile
    return found


def shadow_processes(stack) -> dict[int, int]:
    """{master pid: pid} of the masters' shadow processes once at niceness 19 (a new one
    lowers its priority as it starts)."""
    found = {}
    for pid in stack.shadow_pids():
        master, niceness, _ = proc_stat(pid)
        if niceness == 19:
            assert master not in found, "one shadow process per master"
            found[master] = pid
    return found


def restart_a_worker(stack, master: int) -> None:
    """Stop one worker of ``master`` gracefully; the master starts another."""

    def workers() -> set[int]:
        return set(children_of({master})) & set(stack.worker_pids())

    before = workers()
    os.kill(min(before), signal.SIGTERM)

    def replaced():
        """a new worker took the stopped one's place"""
        now = workers()
        return len(now) == len(before) and now != before

    eventually(replaced, WAIT)


SLOW_SECONDS = 0.2
STACK_REQUESTS = 400


@pytest.mark.integration
def test_a_real_stack_answers_alike_with_a_slow_or_failing_shadow(
    trained_store_dir, tmp_path_factory
):
    store = ModelStore(trained_store_dir)
    rows = rows_of(store, DIABETES, 16)

    def publish(stack):
        stack_store = ModelStore(stack.store)
        base = base_of(stack_store, DIABETES)
        publish_candidate(stack_store, DIABETES, Failing(base), "fails")  # 2
        publish_candidate(stack_store, DIABETES, SlowRows(base, SLOW_SECONDS), "slow")  # 3
        # Running as the workers start.
        start_shadow(stack_store, DIABETES, 2)

    env = {
        "MODEL_SERVICE_RELOAD_INTERVAL": "0.2",
        # The workers unpickle tests.integration.fault_models.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    with running_stack(
        tmp_path_factory.mktemp("shadow"),
        store_from=trained_store_dir,
        env=env,
        before_start=publish,
    ) as stack:
        stack_store = ModelStore(stack.store)
        with requests.Session() as http:
            url = f"{stack.url}/v1/models/{DIABETES}"
            expected = [
                http.post(f"{url}@production/predict", json={"instances": [r]}, timeout=10).json()
                for r in rows
            ]
            expected = [answer["predictions"] for answer in expected]

            # One shadow process beside the workers, started by the master; none of the
            # workers starts one of its own, at its start or when it shadows.
            masters = set(stack.master_pids().values())
            hosts = eventually(
                lambda: (found := shadow_processes(stack)).keys() == masters and found, WAIT
            )
            workers = set(stack.worker_pids())
            # The failing one first: the slow one leaves each worker's queue full for a while.
            for candidate in (2, 3):
                experiment = stack_store.experiment(DIABETES) or start_shadow(
                    stack_store, DIABETES, candidate
                )

                def routed(experiment_id=experiment.id):
                    """every worker routes through the experiment"""
                    ids = {
                        http.post(
                            f"{url}/predict", json={"instances": [rows[0]]}, timeout=10
                        ).headers.get("X-Experiment-Id")
                        for _ in range(8)
                    }
                    return ids == {experiment_id}

                eventually(routed, WAIT)

                def one(index: int):
                    answer = requests.post(
                        f"{url}/predict", json={"instances": [rows[index % len(rows)]]}, timeout=10
                    )
                    return index, answer.status_code, answer.json()["predictions"]

                with concurrent.futures.ThreadPoolExecutor(8) as pool:
                    for index, status, predictions in pool.map(one, range(STACK_REQUESTS)):
                        assert status == 200
                        assert predictions == expected[index % len(rows)]
                labels = {"model": DIABETES, "candidate": str(candidate)}

                def counted(labels=labels, candidate=candidate):
                    """the candidate's runs (and, for the slow one, drops) are in /metrics"""
                    text = http.get(f"{stack.url}/metrics", timeout=10).text
                    runs = metric(text, "model_service_shadow_runs_total", **labels)
                    dropped = metric(text, "model_service_shadow_dropped_total", **labels)
                    errors = metric(
                        text, "model_service_shadow_errors_total", **labels, kind=shadow.EXCEPTION
                    )
                    if candidate == 2:
                        return runs > 0 and errors == runs
                    return runs > 0 and dropped > 0 and errors == 0

                eventually(counted, WAIT)
                assert children_of(workers) == []
                stack_store.stop_experiment(DIABETES)

            # A worker restart (max_requests) leaves the shadow process as it was; one that
            # was killed is started again before the master's next worker.
            master, host = min(hosts.items())
            restart_a_worker(stack, master)
            assert shadow_processes(stack) == hosts
            os.kill(host, signal.SIGKILL)
            eventually(lambda: host not in children_of({master}), WAIT)
            restart_a_worker(stack, master)
            again = eventually(lambda: shadow_processes(stack).get(master), WAIT)
            assert again != host
            experiment = start_shadow(stack_store, DIABETES, 2)
            eventually(lambda: routed(experiment.id), WAIT)
            before = metric(
                http.get(f"{stack.url}/metrics", timeout=10).text,
                "model_service_shadow_runs_total",
                model=DIABETES,
                candidate="2",
            )
            for row in rows:
                http.post(f"{url}/predict", json={"instances": [row]}, timeout=10)

            def served_again():
                """the restarted shadow process runs the new work"""
                text = http.get(f"{stack.url}/metrics", timeout=10).text
                runs = metric(
                    text, "model_service_shadow_runs_total", model=DIABETES, candidate="2"
                )
                return runs > before

            eventually(served_again, WAIT)
            workers = set(stack.worker_pids())
            assert children_of(workers) == []
        stopping = time.monotonic()
    # Leaving the block stopped the stack: the queued shadow work held no worker back.
    assert time.monotonic() - stopping < 20
