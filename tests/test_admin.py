"""Admin endpoints: promote, roll back and reload, only with a valid admin key."""

from __future__ import annotations

import hashlib

import pytest

from service import create_app
from tests.support import IRIS, IRIS_ROW

ADMIN_KEY = "correct-horse-battery-staple"


@pytest.fixture
def admin_app(store_dir):
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    app = create_app({"store": store_dir, "admin_key_hashes": (digest,)})
    yield app
    app.extensions["model_service"].registry.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_admin_is_disabled_without_a_configured_key(client):
    response = client.post(f"/v1/admin/models/{IRIS}/rollback", headers=bearer(ADMIN_KEY))
    assert response.status_code == 403
    assert "no admin key is configured" in response.json["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Authorization: Bearer"),
        ({"Authorization": ADMIN_KEY}, "Authorization: Bearer"),
        (bearer("wrong-key"), "not valid"),
    ],
)
def test_admin_refuses_missing_or_wrong_keys(admin_app, headers, message):
    response = admin_app.test_client().post("/v1/admin/reload", headers=headers)
    assert response.status_code == 401
    assert message in response.json["error"]["message"]


def test_promote_and_rollback_over_http(admin_app, store):
    pickle_bytes = (store.layout.version_dir(IRIS, 1) / "model.pkl").read_bytes()
    version = store.publish(IRIS, pickle_bytes, store.metadata(IRIS, 1))
    client = admin_app.test_client()

    promoted = client.post(
        f"/v1/admin/models/{IRIS}/promote",
        json={"version": version, "reason": "better"},
        headers=bearer(ADMIN_KEY),
    )
    assert promoted.status_code == 200
    assert promoted.json == {
        "model": IRIS,
        "alias": "production",
        "version": version,
        "previous": 1,
    }
    # The worker that handled the promote serves the new version at once.
    served = client.post(f"/v1/models/{IRIS}/predict", json={"instances": [IRIS_ROW]})
    assert served.json["version"] == version
    assert store.alias_state(IRIS)["history"][-1]["reason"] == "better"

    rolled = client.post(f"/v1/admin/models/{IRIS}/rollback", headers=bearer(ADMIN_KEY))
    assert rolled.json["version"] == 1 and rolled.json["previous"] == version
    served = client.post(f"/v1/models/{IRIS}/predict", json={"instances": [IRIS_ROW]})
    assert served.json["version"] == 1

    nothing_left = client.post(f"/v1/admin/models/{IRIS}/rollback", headers=bearer(ADMIN_KEY))
    assert nothing_left.status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "bad_request"),
        ({"version": "two"}, 400, "invalid_version"),
        ({"version": 99}, 404, "version_not_found"),
        ({"version": 1, "alias": "Bad Alias"}, 400, "invalid_alias"),
    ],
)
def test_promote_refuses_bad_requests(admin_app, body, status, code):
    response = admin_app.test_client().post(
        f"/v1/admin/models/{IRIS}/promote", json=body, headers=bearer(ADMIN_KEY)
    )
    assert response.status_code == status
    assert response.json["error"]["code"] == code


def test_reload_reports_readiness(admin_app):
    response = admin_app.test_client().post("/v1/admin/reload", headers=bearer(ADMIN_KEY))
    assert response.status_code == 200
    assert response.json["ready"] is True
