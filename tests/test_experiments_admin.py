"""The admin API of experiments: start, status, stop; only with the admin key, and every
bad request a 4xx in the JSON error shape that changes nothing."""

from __future__ import annotations

import hashlib

import pytest

from service import create_app
from service.store.experiments import EXPERIMENT_FILE
from tests.support import IRIS

ADMIN_KEY = "experiments-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
URL = f"/v1/admin/experiments/{IRIS}"


@pytest.fixture
def admin_client(store, tmp_path):
    data = (store.layout.version_dir(IRIS, 1) / "model.pkl").read_bytes()
    store.publish(IRIS, data, store.metadata(IRIS, 1), aliases=("staging",))
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    app = create_app(
        {"store": store.root, "admin_key_hashes": (digest,), "state_dir": tmp_path / "state"}
    )
    yield app.test_client()
    app.extensions["model_service"].registry.stop()


def test_start_status_stop(admin_client, store):
    assert admin_client.get(URL, headers=AUTH).json == {
        "model": IRIS,
        "experiment": None,
        "history": [],
    }
    started = admin_client.post(
        URL,
        json={
            "variants": {"production": 90, "staging": 10},
            "key_header": "X-Client-ID",
            "shadow": {"target": 2, "share": 0.2},
            "reason": "try v2",
        },
        headers=AUTH,
    )
    assert started.status_code == 200, started.json
    experiment = started.json["experiment"]
    assert experiment["variants"] == [
        {"name": "production", "weight": 90, "version": 1},
        {"name": "staging", "weight": 10, "version": 2},
    ]
    assert experiment["shadow"] == {"target": "2", "share": 0.2, "version": 2}
    assert experiment["key_header"] == "X-Client-ID" and experiment["key_field"] is None
    assert experiment["id"] == store.experiment(IRIS).id
    assert admin_client.get(URL, headers=AUTH).json["experiment"] == experiment

    stopped = admin_client.post(f"{URL}/stop", json={"reason": "done"}, headers=AUTH)
    assert stopped.status_code == 200
    assert stopped.json["experiment"] is None
    assert [(e["action"], e.get("reason")) for e in stopped.json["history"]] == [
        ("start", "try v2"),
        ("stop", "done"),
    ]
    assert store.experiment(IRIS) is None


def test_a_shadow_alone_runs_on_the_default_alias(admin_client):
    answer = admin_client.post(URL, json={"shadow": {"target": "staging"}}, headers=AUTH)
    assert answer.status_code == 200
    experiment = answer.json["experiment"]
    assert experiment["variants"] == [{"name": "production", "weight": 100, "version": 1}]
    assert experiment["shadow"] == {"target": "staging", "share": 0.1, "version": 2}
    # A stop without a body is a stop without a reason.
    assert admin_client.post(f"{URL}/stop", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (b"", 400, "bad_request", "send the experiment as JSON"),
        (b"[1]", 400, "invalid_experiment", "must be a JSON object"),
        (b'{"variants": {"production": 1e999}}', 400, "number_out_of_range", ""),
        ({"variants": {"production": 90, "staging": 20}}, 400, "invalid_experiment", "110"),
        ({"variants": {"production": 90, "7": 10}}, 404, "version_not_found", "no version 7"),
        ({"variants": {"production": 90, "beta": 10}}, 404, "alias_not_found", "alias 'beta'"),
        ({"variants": "production:100"}, 400, "invalid_experiment", "needs a weight"),
        ({"variants": {"production": 100}, "colour": 1}, 400, "invalid_experiment", "colour"),
        ({"variants": {"production": 100}, "alpha": 2}, 400, "invalid_experiment", "alpha"),
        ({"variants": {"production": "100"}}, 400, "invalid_experiment", "must be a number"),
    ],
)
def test_bad_starts_are_refused_and_change_nothing(
    admin_client, store, body, status, code, message
):
    path = store.layout.model_dir(IRIS) / EXPERIMENT_FILE
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    answer = admin_client.post(URL, headers=AUTH, **kwargs)
    assert answer.status_code == status
    assert answer.json["error"]["code"] == code
    assert message in answer.json["error"]["message"]
    assert not path.exists()


def test_a_second_start_conflicts_and_a_stop_without_experiment_is_not_found(admin_client, store):
    assert admin_client.post(URL, json={"variants": "production=100"}, headers=AUTH).json
    before = (store.layout.model_dir(IRIS) / EXPERIMENT_FILE).read_bytes()
    again = admin_client.post(URL, json={"variants": {"staging": 100}}, headers=AUTH)
    assert again.status_code == 409
    assert again.json["error"]["code"] == "experiment_running"
    assert (store.layout.model_dir(IRIS) / EXPERIMENT_FILE).read_bytes() == before
    assert admin_client.post(f"{URL}/stop", headers=AUTH).status_code == 200
    missing = admin_client.post(f"{URL}/stop", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json["error"]["code"] == "experiment_not_found"
    bad = admin_client.post(f"{URL}/stop", json={"reason": 5}, headers=AUTH)
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/admin/experiments/no-such-model", 404, "model_not_found"),
        ("/v1/admin/experiments/Bad_Name", 400, "invalid_model_name"),
    ],
)
def test_unknown_and_malformed_models(admin_client, path, status, code):
    for answer in (
        admin_client.get(path, headers=AUTH),
        admin_client.post(path, json={"variants": {"production": 100}}, headers=AUTH),
        admin_client.post(f"{path}/stop", headers=AUTH),
    ):
        assert answer.status_code == status
        assert answer.json["error"]["code"] == code


def test_the_admin_key_is_needed(admin_client, client):
    assert admin_client.get(URL).status_code == 401
    wrong = admin_client.post(
        URL, json={"variants": {"production": 100}}, headers={"Authorization": "Bearer not-the-key"}
    )
    assert wrong.status_code == 401
    # Without any admin key configured, the admin API is closed.
    assert client.get(URL, headers=AUTH).status_code == 403
