"""Feedback, live quality and drift across Gunicorn workers: two workers behind Nginx
share one state directory (<runtime_dir>/state), so a label reaching either worker
joins a prediction either served, and the figures are those of both."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from service.keys import KeyRing, digest
from service.monitoring import predlog
from service.training.demo import demo_specs
from service.training.split import prepare
from tests.support import IRIS, eventually, running_stack

pytestmark = pytest.mark.integration

# Feedback needs a key with scope feedback.
FEEDBACK_KEY = "msk_feedback-key-of-the-monitoring-stack"
FEEDBACK_HEADERS = {"Authorization": f"Bearer {FEEDBACK_KEY}"}


def add_feedback_key(stack) -> None:
    KeyRing(stack.store).add("labeller", ["feedback"], digest(FEEDBACK_KEY))


@pytest.fixture(scope="module")
def monitored_stack(trained_store_dir, tmp_path_factory):
    env = {"MODEL_SERVICE_RELOAD_INTERVAL": "0.2", "MODEL_SERVICE_PREDICTION_LOG": "1"}
    with running_stack(
        tmp_path_factory.mktemp("monitoring-stack"),
        store_from=trained_store_dir,
        env=env,
        before_start=add_feedback_key,
    ) as started:
        yield started


def iris_rows():
    spec = next(s for s in demo_specs() if s.name == IRIS)
    _, split = prepare(spec)
    frame = split.X_rest.reset_index(drop=True)
    rows = json.loads(frame.to_json(orient="records"))
    return rows, [str(label) for label in split.y_rest]


def predict_alone(url: str, row: dict) -> tuple[str, str]:
    """One request on a connection of its own (so Nginx and the kernel spread them)."""
    answer = requests.post(
        f"{url}/v1/models/{IRIS}/predict",
        json={"instances": [row]},
        headers={"Connection": "close"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["request_id"], body["predictions"][0]


def test_feedback_and_drift_across_workers(monitored_stack):
    url = monitored_stack.url
    rows, labels = iris_rows()
    with ThreadPoolExecutor(max_workers=8) as pool:
        served = list(pool.map(lambda row: predict_alone(url, row), rows))
    request_ids = [request_id for request_id, _ in served]
    assert len(set(request_ids)) == len(rows)

    # Both workers served: each writes the prediction log under its own pid.
    state_dir = monitored_stack.runtime_dir / "state"
    workers = set(monitored_stack.worker_pids())
    assert len(workers) == 2

    def every_line_written() -> list[dict] | None:
        lines = list(predlog.read_lines(state_dir))
        return lines if len(lines) >= len(rows) else None

    lines = eventually(every_line_written, timeout=10, message="a prediction log line per row")
    assert sorted(line["request_id"] for line in lines) == sorted(request_ids)
    writers = {int(path.name.split("-")[1].split(".")[0]) for path in predlog.log_files(state_dir)}
    assert writers == workers

    # Labels for all of them through Nginx: half one by one, half in batches of ten,
    # each on a new connection so either worker may take it.
    expected_correct = sum(
        1 for (_, predicted), label in zip(served, labels, strict=True) if predicted == label
    )
    items = [
        {"request_id": request_id, "index": 0, "label": label}
        for request_id, label in zip(request_ids, labels, strict=True)
    ]
    half = len(items) // 2
    bodies = [*items[:half], *(items[i : i + 10] for i in range(half, len(items), 10))]

    def post(body):
        return requests.post(
            f"{url}/v1/models/{IRIS}/feedback",
            json=body,
            headers={"Connection": "close", **FEEDBACK_HEADERS},
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post, bodies))
    assert [a.status_code for a in answers] == [200] * len(bodies), [
        a.text for a in answers if a.status_code != 200
    ]
    assert sum(a.json()["accepted"] for a in answers) == len(rows)

    report = requests.get(f"{url}/v1/models/{IRIS}/performance", timeout=30).json()
    version = next(v for v in report["versions"] if v["version"] == 1)
    assert version["count"] == len(rows)
    assert version["feedback_total"] == len(rows)
    assert version["live"]["accuracy"] == round(expected_correct / len(rows), 6)

    # Every row counted for drift, whichever worker served it; training rows: no drift.
    drift = requests.get(f"{url}/v1/models/{IRIS}/drift", timeout=30).json()
    version = next(v for v in drift["versions"] if v["version"] == 1)
    assert version["rows"] == len(rows)
    for name, feature in version["features"].items():
        assert feature["count"] == len(rows), name
        assert sum(feature["live_counts"]) == len(rows), name
        assert feature["psi"] < 0.01, name  # the very rows the histograms were made of
        # Enough rows (drift_min_rows, 100) to be judged, and nothing but noise to see.
        assert feature["status"] == "stable" and feature["p_value"] > 0.5, name
    assert version["flagged"] == [] and version["too_few_rows"] == []


def test_unknown_request_ids_are_404_through_nginx(monitored_stack):
    answer = requests.post(
        f"{monitored_stack.url}/v1/models/{IRIS}/feedback",
        json={"request_id": "never-served", "index": 0, "label": "setosa"},
        headers=FEEDBACK_HEADERS,
        timeout=30,
    )
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "prediction_not_found"
