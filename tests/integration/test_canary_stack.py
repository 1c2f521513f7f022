"""Canaries on the real stack (Nginx -> two Gunicorn instances), driven by `modelctl canary`
while clients send requests with a client key and label every answer through the feedback
route: a deliberately bad version is rolled back on its own once feedback shows it, a
version as good as production ramps through every step and is promoted."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest
import requests

from service.cli import main
from service.keys import KeyRing, digest
from service.store import ModelStore
from service.training.demo import demo_specs
from service.training.trainer import train
from tests.integration.test_monitoring_stack import iris_rows
from tests.support import IRIS, eventually, running_stack

pytestmark = pytest.mark.integration

FEEDBACK_KEY = "msk_feedback-key-of-the-canary-stack"
CLIENTS = 200  # distinct client keys: sticky assignment, and enough of them to split
FEEDBACK_EVERY = 0.3  # seconds between batches of labels
PREDICTORS = 3  # client threads


ADMIN_KEY = "msk_admin-key-of-the-canary-stack"


def add_keys(stack) -> None:
    keys = KeyRing(stack.store)
    keys.add("labeller", ["feedback"], digest(FEEDBACK_KEY))
    keys.add("ops", ["admin"], digest(ADMIN_KEY))


@pytest.fixture(scope="module")
def canary_stack(trained_store_dir, tmp_path_factory):
    env = {"MODEL_SERVICE_RELOAD_INTERVAL": "0.2"}
    with running_stack(
        tmp_path_factory.mktemp("canary-stack"),
        store_from=trained_store_dir,
        env=env,
        before_start=add_keys,
    ) as started:
        yield started


class Traffic:
    """Clients predicting with a client key (X-Client-ID) in two threads, and a labeller
    posting the true label of every answer in batches; stopped and joined on exit."""

    def __init__(self, url: str):
        self.url = url
        self.rows, self.labels = iris_rows()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.unlabelled: list[dict] = []
        self.versions: list[str] = []
        self.failures: list[str] = []
        self.threads = [
            threading.Thread(target=self._predict, args=(i,)) for i in range(PREDICTORS)
        ]
        self.threads.append(threading.Thread(target=self._label))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _predict(self, offset: int) -> None:
        with requests.Session() as session:
            i = offset
            while not self.stopping.is_set():
                row = i % len(self.rows)
                answer = session.post(
                    f"{self.url}/v1/models/{IRIS}/predict",
                    json={"instances": [self.rows[row]]},
                    headers={"X-Client-ID": f"client-{i % CLIENTS}"},
                    timeout=30,
                )
                i += PREDICTORS
                with self.lock:
                    if answer.status_code != 200:
                        self.failures.append(answer.text)
                        continue
                    self.versions.append(answer.headers.get("X-Model-Version", ""))
                    self.unlabelled.append(
                        {
                            "request_id": answer.json()["request_id"],
                            "index": 0,
                            "label": self.labels[row],
                        }
                    )

    def _label(self) -> None:
        headers = {"Authorization": f"Bearer {FEEDBACK_KEY}"}
        with requests.Session() as session:
            while not self.stopping.wait(FEEDBACK_EVERY):
                with self.lock:
                    batch, self.unlabelled = self.unlabelled[:500], self.unlabelled[500:]
                if batch:
                    answer = session.post(
                        f"{self.url}/v1/models/{IRIS}/feedback",
                        json=batch,
                        headers=headers,
                        timeout=30,
                    )
                    if answer.status_code != 200:
                        with self.lock:
                            self.failures.append(answer.text)

    def recent_versions(self, count: int) -> set[str]:
        with self.lock:
            return set(self.versions[-count:])


def run_canary(stack, version: int, capsys, evidence: list[str]) -> tuple[int, dict, str]:
    code = main(
        [
            *("canary", IRIS, str(version), "--steps", "20,50,100", "--step-seconds", "2"),
            *("--min-samples", "30", "--max-wait", "20", "--key-header", "X-Client-ID"),
            *("--store", str(stack.store), *evidence, "--json"),
        ]
    )
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def experiment_history(stack) -> list[dict]:
    return ModelStore(stack.store).experiment_state(IRIS)["history"]


def test_a_bad_version_is_rolled_back_on_feedback(canary_stack, capsys):
    spec = next(s for s in demo_specs() if s.name == IRIS)
    always_the_prior = dataclasses.replace(
        spec, estimator_class="sklearn.dummy.DummyClassifier", estimator_params={}
    )
    store = ModelStore(canary_stack.store)
    bad = train(
        always_the_prior,
        store,
        force_reason="a model that predicts one class, for the canary's test",
        aliases=(),
        onnx=False,
    ).version

    with Traffic(canary_stack.url) as traffic:
        started = time.monotonic()
        # The evidence from this host's monitoring state.
        state = ["--state-dir", str(canary_stack.runtime_dir / "state")]
        code, summary, progress = run_canary(canary_stack, bad, capsys, state)
        took = time.monotonic() - started
        assert code == 1, progress
        # Once the canary is stopped, production serves everything again.
        eventually(lambda: traffic.recent_versions(40) == {"1"}, 15, message="only v1 served")
    assert traffic.failures == []

    assert summary["result"] == "rolled_back"
    assert (summary["production_before"], summary["production_after"]) == (1, 1)
    assert took < 30, progress  # at the first step's look, not after the whole ramp
    assert summary["reason"].startswith("canary worse than production: ")
    assert "quality: canary " in summary["reason"]
    assert "step 1 (20 %): WORSE" in progress and "rolled back:" in progress
    assert ModelStore(canary_stack.store).aliases(IRIS)["production"] == 1

    step, last = experiment_history(canary_stack)[-2:]
    assert last["action"] == "rollback" and last["id"] == summary["experiment"]
    assert step["action"] == "step" and step["verdict"] == "worse" and last["step"] == 1
    quality = next(c for c in last["worse"] if c["metric"] == "quality")
    assert quality["canary"] > quality["production"] + 0.3  # the share predicted wrong
    assert min(quality["samples"].values()) >= 30
    assert quality["p_value"] < quality["alpha"] == pytest.approx(0.05 / 9)


def test_a_version_as_good_as_production_is_promoted(canary_stack, capsys):
    # Trained again from production's spec: the same model, scores and backend (ONNX).
    spec = next(s for s in demo_specs() if s.name == IRIS)
    good = train(spec, ModelStore(canary_stack.store), aliases=()).version

    with Traffic(canary_stack.url) as traffic:
        # The evidence through the host's admin API, as for a fleet.
        api = ["--url", canary_stack.url, "--key", ADMIN_KEY]
        code, summary, progress = run_canary(canary_stack, good, capsys, api)
        assert code == 0, progress
        eventually(
            lambda: traffic.recent_versions(40) == {str(good)}, 15, message=f"only v{good} served"
        )
    assert traffic.failures == []

    assert summary["result"] == "promoted"
    assert (summary["production_before"], summary["production_after"]) == (1, good)
    assert [(s["step"], s["share"], s["verdict"]) for s in summary["steps"]] == [
        (1, 20, "pass"),
        (2, 50, "pass"),
        (3, 100, "pass"),
    ]
    assert ModelStore(canary_stack.store).aliases(IRIS)["production"] == good

    history = experiment_history(canary_stack)
    mine = [e for e in history if e["id"] == summary["experiment"]]
    assert [e["action"] for e in mine] == ["start", "step", "weights", "step", "weights", "step",
                                           "promote"]  # fmt: skip
    # The evidence grew with each step: cumulative over the experiment.
    canary_requests = [
        next(c for c in e["checks"] if c["metric"] == "errors")["samples"]["canary"]
        for e in mine
        if e["action"] == "step"
    ]
    assert canary_requests == sorted(canary_requests) and canary_requests[0] >= 30
