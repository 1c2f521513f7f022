"""An experiment's evidence on the real stack (Nginx -> two Gunicorn workers over one
monitoring state): every worker's answers and the feedback joined to them reach the
report, `modelctl experiment report --url` reads a host's totals through Nginx, and
/metrics sums the variants' series over the workers (Prometheus multiprocess mode)."""

from __future__ import annotations

import collections
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.cli import main
from service.keys import KeyRing, digest
from service.store import ModelStore
from service.store.experiments import parse_variants
from tests.support import IRIS, eventually, running_stack
from tests.test_monitoring import IRIS_LABELS, IRIS_ROWS
from tests.test_promotion import publish_copy

pytestmark = pytest.mark.integration

ADMIN_KEY = "msk_admin-key-of-the-experiment-report-stack"
FEEDBACK_KEY = "msk_feedback-key-of-the-experiment-report-stack"
REQUESTS = 120


def prepare(stack) -> None:
    store = ModelStore(stack.store)
    publish_copy(store, aliases=("staging",))
    keys = KeyRing(stack.store)
    keys.add("operator", ["admin"], digest(ADMIN_KEY))
    keys.add("labeller", ["feedback"], digest(FEEDBACK_KEY))


@pytest.fixture(scope="module")
def stack(trained_store_dir, tmp_path_factory):
    env = {"MODEL_SERVICE_RELOAD_INTERVAL": "0.2"}
    with running_stack(
        tmp_path_factory.mktemp("experiment-report"),
        store_from=trained_store_dir,
        env=env,
        before_start=prepare,
    ) as started:
        yield started


def experiment_series(http, url: str) -> dict[str, float]:
    """model_service_experiment_requests_total per variant, as one scrape shows it."""
    found: dict[str, float] = collections.Counter()
    text = http.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "model_service_experiment_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["variant"]] += sample.value
    return found


def test_every_workers_answers_reach_the_report_and_metrics(stack, http, capsys):
    experiment = ModelStore(stack.store).start_experiment(
        IRIS, parse_variants("production=50,staging=50")
    )

    def routed():
        """answers of every worker name the experiment"""
        return all(
            http.post(
                f"{stack.url}/v1/models/{IRIS}/predict", json={"instances": [IRIS_ROWS[0]]}
            ).headers.get("X-Experiment-Id")
            == experiment.id
            for _ in range(8)
        )

    eventually(routed)
    # The answers before this point are in the evidence too: count from the report itself.
    served: dict[str, int] = collections.Counter()
    correct: dict[str, int] = collections.Counter()
    for i in range(REQUESTS):
        row = i % len(IRIS_ROWS)
        answer = http.post(
            f"{stack.url}/v1/models/{IRIS}/predict",
            json={"instances": [IRIS_ROWS[row]]},
            headers={"X-Request-ID": f"stack-{i}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        variant = answer.headers["X-Model-Variant"]
        served[variant] += 1
        correct[variant] += answer.json()["predictions"][0] == IRIS_LABELS[row]
        labelled = http.post(
            f"{stack.url}/v1/models/{IRIS}/feedback",
            json={"request_id": f"stack-{i}", "index": 0, "label": IRIS_LABELS[row]},
            headers={"Authorization": f"Bearer {FEEDBACK_KEY}"},
            timeout=10,
        )
        assert labelled.status_code == 200, labelled.text

    argv = ["experiment", "report", IRIS, "--json", "--url", stack.url, "--key", ADMIN_KEY]

    def reported():
        """every labelled answer is in the report read over the admin API"""
        assert main([*argv, "--store", str(stack.store)]) == 0
        built = json.loads(capsys.readouterr().out)
        labelled = {v["name"]: v["quality"]["labelled"] for v in built["variants"]}
        return built if labelled == served else None

    built = eventually(reported, timeout=20, interval=0.5)
    assert all(v["requests"] >= served[v["name"]] for v in built["variants"])
    # Feedback joined to the variant that served each request, whichever worker took it.
    assert {v["name"]: v["quality"]["count"] for v in built["variants"]} == correct

    def scraped():
        """/metrics counts what the report counts, summed over the workers"""
        assert main([*argv, "--store", str(stack.store)]) == 0
        built = json.loads(capsys.readouterr().out)
        requests = {v["name"]: v["requests"] for v in built["variants"]}
        return experiment_series(http, stack.url) == requests

    eventually(scraped, timeout=20, interval=0.5)
