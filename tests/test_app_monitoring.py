"""Two apps in one process (tests, an embedding program) keep their monitoring apart:
each counts its own requests and predictions, observes only its own registry's models,
and joins feedback to what it served itself, in its own state."""

from __future__ import annotations

import pytest

from service import create_app
from service.keys import KeyRing, digest
from service.monitoring import live
from service.runtime import hooks
from tests.test_metrics import scrape, value
from tests.test_monitoring import (
    FEEDBACK_KEY,
    IRIS,
    IRIS_LABELS,
    IRIS_ROWS,
    feedback,
    labelled,
    predict,
)


@pytest.fixture
def two_apps(store_dir, tmp_path, monkeypatch):
    # A label for an unknown prediction is looked for again this long: one process here.
    monkeypatch.setattr(live, "FEEDBACK_WAIT", 0.1)
    KeyRing(store_dir).add("labeller", ["feedback"], digest(FEEDBACK_KEY))
    apps = [
        create_app({"store": store_dir, "state_dir": tmp_path / name}) for name in ("one", "two")
    ]
    yield apps
    for app in apps:
        app.extensions["model_service.monitoring"].stop()
        app.extensions["model_service"].registry.stop()


def test_two_apps_in_one_process_keep_their_monitoring_apart(two_apps):
    first, second = two_apps
    one, two = first.test_client(), second.test_client()
    predict(one, IRIS, IRIS_ROWS, "served-by-one")
    predict(two, IRIS, IRIS_ROWS[:2], "served-by-two")

    # Metrics: each app counted its own request and rows, not the other's.
    for client, rows in ((one, len(IRIS_ROWS)), (two, 2)):
        families = scrape(client)
        assert value(families, "model_service_predictions_total", model=IRIS) == rows
        assert (
            value(
                families,
                "model_service_requests_total",
                route="/v1/models/<model_ref>/predict",
                model=IRIS,
            )
            == 1
        )

    # Observers: each registry's own, no object that keeps figures shared (the request
    # log's function keeps none), none observing the whole process.
    observers = [app.extensions["model_service"].registry.observers for app in two_apps]
    owners = [{getattr(o, "__self__", None) for o in found} - {None} for found in observers]
    assert not owners[0] & owners[1]
    for app, found in zip(two_apps, owners, strict=True):
        monitoring = app.extensions["model_service.monitoring"]
        assert {monitoring.live, monitoring.metrics} <= found
        assert monitoring.live.observe not in hooks._process

    # The live monitor: feedback joins what this app served, in its own state only.
    joined = feedback(one, IRIS, labelled("served-by-one", IRIS_LABELS))
    assert joined.status_code == 200, joined.json
    assert feedback(two, IRIS, labelled("served-by-one", IRIS_LABELS)).status_code == 404
    assert feedback(one, IRIS, labelled("served-by-two", ["setosa"])).status_code == 404
    assert [version_one(c, "performance")["feedback_total"] for c in (one, two)] == [6, 0]
    assert [version_one(c, "drift")["rows"] for c in (one, two)] == [len(IRIS_ROWS), 2]


def version_one(client, report: str) -> dict:
    answer = client.get(f"/v1/models/{IRIS}/{report}")
    assert answer.status_code == 200
    return next(v for v in answer.json["versions"] if v["version"] == 1)
