"""The shadow in an experiment's report: shadowed requests go through the app, the shadow
runner and the recorder into the host's state, and `modelctl experiment report` (this
host's state, or hosts' admin API added up with --url), the admin report route and the
status page say what the candidate did: runs, drops, errors by kind, agreement with its
Wilson interval (classifier) or the distribution of the differences (regressor)."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from jsonschema import Draft202012Validator
from werkzeug.serving import make_server

from service import create_app
from service.cli import main
from service.experiments import stats
from service.runtime import shadow
from service.store import ModelRef
from service.store.experiments import Experiment
from tests.integration.fault_models import Failing, OneLabel, Shifted
from tests.test_shadow import (
    DIABETES,
    FLOAT32,
    IRIS,
    SHIFT,
    WAIT,
    applied,
    base_of,
    post_rows,
    publish_candidate,
    rows_of,
    start_shadow,
)

ADMIN_KEY = "experiment-shadow-report-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def app(store_dir, tmp_path, monkeypatch):
    state_dir = tmp_path / "monitoring"
    monkeypatch.setenv("MODEL_SERVICE_STATE_DIR", str(state_dir))  # what modelctl reads
    app = create_app(
        {
            "store": store_dir,
            "reload_interval": 0.1,
            "state_dir": state_dir,
            "admin_key_hashes": (hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),),
        }
    )
    yield app
    app.extensions["model_service"].registry.stop()


@pytest.fixture
def host(app):
    """The app behind a real HTTP server on loopback, as --url reaches a host."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def report(store, name: str, *options: str) -> int:
    return main(["experiment", "report", name, *options, "--store", str(store.root)])


def test_a_classifiers_shadow_agreement_is_reported_everywhere(app, client, store, host, capsys):
    iris = app.extensions["model_service"].registry.get(ModelRef(IRIS, alias="production"))
    label = iris.classes[0]
    candidate = publish_candidate(store, IRIS, OneLabel(base_of(store, IRIS), label), "one")
    experiment = start_shadow(store, IRIS, candidate)
    applied(app, IRIS)
    # Before any shadowed request: the target, with nothing run yet.
    empty = client.get(f"/v1/admin/experiments/{IRIS}/report", headers=ADMIN).json["shadow"]
    assert [(c["candidate"], c["runs"], c["agreement"]["value"]) for c in empty["candidates"]] == [
        (str(candidate), 0, None)
    ]
    served = post_rows(client, IRIS, rows_of(store, IRIS, 12))
    assert shadow.active().drain(WAIT)
    agreed = sum(answer == [label] for answer in served)
    assert 0 < agreed < 12  # the demo rows are not all of one class

    built = client.get(f"/v1/admin/experiments/{IRIS}/report", headers=ADMIN).json
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    Draft202012Validator(schemas["ExperimentReport"]).validate(built)
    section = built["shadow"]
    assert (section["target"], section["share"]) == (str(candidate), 1.0)
    [figures] = section["candidates"]
    assert (figures["candidate_version"], figures["runs"], figures["rows"]) == (candidate, 12, 12)
    assert figures["dropped"] == 0 and set(figures["errors"].values()) == {0}
    agreement = figures["agreement"]
    assert (agreement["count"], agreement["of"]) == (agreed, 12)
    low, high = stats.wilson(agreed, 12, experiment.alpha)
    assert agreement["interval"] == [pytest.approx(low, rel=1e-5), pytest.approx(high, rel=1e-5)]
    assert "difference" not in figures

    # modelctl experiment report, from this host's state: the same figures.
    assert report(store, IRIS, "--json") == 0
    assert json.loads(capsys.readouterr().out)["shadow"] == section
    assert report(store, IRIS) == 0
    text = capsys.readouterr().out
    assert f"shadow: {candidate} on 100% of the requests" in text
    assert f"{candidate} (version {candidate}): 12 runs, 0 dropped, errors none" in text
    assert f"agreement with the primary: {agreed / 12:.4g} [{low:.4g}, {high:.4g}] over 12" in text

    # Over two hosts' admin API (the same host twice): the sums add up, the agreement
    # stays, its interval narrows.
    assert report(store, IRIS, "--json", "--url", host, "--url", host, "--key", ADMIN_KEY) == 0
    [fleet] = json.loads(capsys.readouterr().out)["shadow"]["candidates"]
    assert (fleet["runs"], fleet["rows"], fleet["agreement"]["count"]) == (24, 24, 2 * agreed)
    assert fleet["agreement"]["value"] == agreement["value"]
    assert fleet["agreement"]["interval"][1] - fleet["agreement"]["interval"][0] < high - low
    # A host that does not give its shadow sums fails the report: none from part of a fleet.
    assert report(store, IRIS, "--url", host, "--key", "not-the-key") == 1
    assert "no totals" in capsys.readouterr().err

    # The status page's experiment panel reads the same report.
    status = client.get("/v1/status").json
    shown = next(m for m in status["models"] if m["name"] == IRIS)["experiment"]
    assert shown["shadow"] == section
    assert "data-shadow" in client.get("/status").get_data(as_text=True)


def shadowed(app, client, store, capsys, candidate: int, rows: int) -> tuple[Experiment, dict]:
    """Shadow ``rows`` requests of DIABETES on version ``candidate``: the experiment, and
    the candidate's figures in the JSON report once the shadow has run them all."""
    experiment = start_shadow(store, DIABETES, candidate)
    applied(app, DIABETES)
    post_rows(client, DIABETES, rows_of(store, DIABETES, rows))
    assert shadow.active().drain(WAIT)
    # modelctl reads the host's state, where the app's recorder writes within a second:
    # at once here.
    app.extensions["model_service.monitoring"].shadow.flush()
    assert report(store, DIABETES, "--json") == 0
    [figures] = json.loads(capsys.readouterr().out)["shadow"]["candidates"]
    return experiment, figures


def test_a_regressors_shadow_differences_and_errors_are_reported(app, client, store, capsys):
    shifted = publish_candidate(store, DIABETES, Shifted(base_of(store, DIABETES), SHIFT), "+3")
    first, figures = shadowed(app, client, store, capsys, shifted, 10)
    assert (figures["runs"], figures["rows"]) == (10, 10)
    difference = figures["difference"]
    assert difference["value"] == pytest.approx(SHIFT, abs=FLOAT32)
    assert difference["sd"] == pytest.approx(0.0, abs=FLOAT32)
    assert difference["max_abs"] == pytest.approx(SHIFT, abs=FLOAT32)
    assert difference["interval"][0] <= difference["value"] <= difference["interval"][1]
    assert "agreement" not in figures
    assert report(store, DIABETES) == 0
    assert "difference candidate - primary: mean 3" in capsys.readouterr().out

    # A failing candidate: its errors by kind, and an error rate with its interval.
    store.stop_experiment(DIABETES)
    failing = publish_candidate(store, DIABETES, Failing(base_of(store, DIABETES)), "fails")
    second, figures = shadowed(app, client, store, capsys, failing, 6)
    assert figures["errors"][shadow.EXCEPTION] == 6 and figures["rows"] == 0
    assert (figures["error_rate"]["value"], figures["error_rate"]["of"]) == (1.0, 6)
    assert report(store, DIABETES) == 0
    assert f"errors {shadow.EXCEPTION} 6 (1 [" in capsys.readouterr().out
    # The first experiment's report still has its own candidate's figures.
    assert report(store, DIABETES, "--json", "--experiment", first.id) == 0
    [earlier] = json.loads(capsys.readouterr().out)["shadow"]["candidates"]
    assert (earlier["candidate_version"], earlier["runs"]) == (shifted, 10)
    assert second.id != first.id
