"""API keys: the key file (create, list, revoke, expiry), the scope each route needs and the
401/403 answers in each protocol's shape (native, Open Inference Protocol, MLflow, gRPC),
rereading the file when it changes, last use, and `modelctl keys`."""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from service import create_app
from service.api import auth
from service.cli import cli
from service.config import Settings
from service.errors import BadRequest, Forbidden, Unauthorized
from service.grpc.server import create_server
from service.keys import (
    KEYS_FILE,
    KeyExists,
    KeyNotFound,
    KeyRing,
    KeyUsage,
    KeyVerifier,
    digest,
    parse_expiry,
    parse_keys,
)
from service.protocols.grpc import open_inference_pb2 as pb
from service.protocols.grpc import open_inference_pb2_grpc as pb_grpc
from service.store import ModelStore, archive
from service.store.mirror import StoreMirror
from service.store.remote import RemoteStore
from tests.sshd import loopback_sshd, modelctl, store_serve
from tests.support import IRIS, IRIS_ROW, eventually

V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the key file ----------------------------------------------------------------------


def test_create_list_and_revoke_keep_only_digests(tmp_path):
    ring = KeyRing(tmp_path)
    key = ring.create("ci", ["read", "predict"])
    assert key.startswith("msk_") and len(key) > 40
    text = (tmp_path / KEYS_FILE).read_text()
    assert key not in text
    assert digest(key) in text
    (listed,) = ring.list()
    assert (listed.name, listed.scopes, listed.expires) == ("ci", {"read", "predict"}, None)
    assert listed.describe() == {
        "name": "ci",
        "scopes": ["predict", "read"],
        "created": listed.created,
        "expires": None,
    }
    with pytest.raises(KeyExists):
        ring.create("ci", ["read"])
    ring.revoke("ci")
    assert ring.list() == []
    with pytest.raises(KeyNotFound):
        ring.revoke("ci")


@pytest.mark.parametrize(
    ("name", "scopes", "message"),
    [
        ("ci", ["root"], "unknown: root"),
        ("ci", [], "scopes must be some of"),
        ("Bad Name", ["read"], "lowercase letters"),
        ("../x", ["read"], "lowercase letters"),
    ],
)
def test_bad_names_and_scopes_are_refused(tmp_path, name, scopes, message):
    with pytest.raises(BadRequest, match=message):
        KeyRing(tmp_path).create(name, scopes)


def test_adding_the_same_digest_again_changes_nothing(tmp_path):
    ring = KeyRing(tmp_path)
    assert ring.add("gate", ["read"], digest("k")) is True
    before = (tmp_path / KEYS_FILE).read_bytes()
    assert ring.add("gate", ["read"], digest("k")) is False
    assert (tmp_path / KEYS_FILE).read_bytes() == before
    with pytest.raises(KeyExists):
        ring.add("gate", ["read"], digest("another"))


def test_expiry_forms():
    now = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)
    assert parse_expiry("30d", now) == now + dt.timedelta(days=30)
    assert parse_expiry("12h", now) == now + dt.timedelta(hours=12)
    assert parse_expiry("2027-01-01", now) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(BadRequest, match="in the past"):
        parse_expiry("2020-01-01", now)
    with pytest.raises(BadRequest, match="not a date"):
        parse_expiry("next week", now)


def test_an_expired_key_is_refused(tmp_path):
    ring = KeyRing(tmp_path)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    ring.add("old", ["read"], digest("old-key"), past)
    ring.add("new", ["read"], digest("new-key"), dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    keys = KeyVerifier(tmp_path)
    with pytest.raises(Unauthorized, match="expired"):
        keys.authorize("old-key", "read")
    assert keys.authorize("new-key", "read").name == "new"


def test_a_change_of_the_file_is_seen_within_the_check_interval(tmp_path):
    ring = KeyRing(tmp_path)
    keys = KeyVerifier(tmp_path, check_interval=0.1)
    with pytest.raises(Unauthorized):
        keys.authorize("k", "read")
    ring.add("k", ["read"], digest("k"))
    eventually(lambda: _allowed(keys, "k", "read"), timeout=2)
    ring.revoke("k")
    eventually(lambda: not _allowed(keys, "k", "read"), timeout=2)


def test_a_broken_file_keeps_the_keys_read_before(tmp_path):
    KeyRing(tmp_path).add("k", ["read"], digest("k"))
    keys = KeyVerifier(tmp_path, check_interval=0.05)
    assert _allowed(keys, "k", "read")
    (tmp_path / KEYS_FILE).write_text("keys: [not, a, mapping")
    time.sleep(0.1)  # two check intervals: the broken file has been looked at
    assert _allowed(keys, "k", "read")


def test_a_broken_file_is_reported_without_quoting_its_digests():
    sha256 = digest("k")
    with pytest.raises(ValueError) as caught:
        parse_keys(f"keys:\n  k:\n    sha256: {sha256}: [read\n")
    assert str(caught.value).startswith("not valid YAML at line 3")
    assert sha256 not in str(caught.value)


def test_last_use_is_written_at_most_once_per_interval(tmp_path):
    KeyRing(tmp_path).add("k", ["read"], digest("k"))
    usage = KeyUsage(tmp_path / "state", interval=60)
    keys = KeyVerifier(tmp_path, usage=usage)
    keys.authorize("k", "read")
    first = usage.last_used()["k"]
    assert abs(first - time.time()) < 5
    keys.authorize("k", "read")
    assert usage.last_used()["k"] == first


def _allowed(keys: KeyVerifier, token: str, scope: str) -> bool:
    try:
        keys.authorize(token, scope)
    except (Unauthorized, Forbidden):
        return False
    return True


# -- the HTTP API ------------------------------------------------------------------------


@pytest.fixture
def keyed_store(store_dir):
    ring = KeyRing(store_dir)
    return {
        "predict": ring.create("predictor", ["predict"]),
        "read": ring.create("reader", ["read"]),
        "feedback": ring.create("labeller", ["feedback"]),
        "admin": ring.create("operator", ["admin"]),
    }


@pytest.fixture
def make_client(store_dir, tmp_path):
    apps = []

    def make(**settings):
        config = {"store": store_dir, "state_dir": tmp_path / "state", "reload_interval": 0.1}
        app = create_app({**config, **settings})
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["model_service.monitoring"].stop()
        app.extensions["model_service"].registry.stop()


def test_every_route_has_a_scope(make_client):
    app = make_client().application
    assert auth.unmapped_endpoints(app) == []


# (method, path, body, how the protocol shapes an error: the code and message's places)
PREDICTION_ROUTES = [
    ("native", "post", f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}),
    ("v2", "post", f"/v2/models/{IRIS}/infer", V2_BODY),
    ("mlflow", "post", f"/v1/models/{IRIS}/invocations", {"instances": [IRIS_ROW]}),
]


def error_of(protocol: str, body: dict) -> tuple[str | None, str]:
    if protocol == "native":
        return body["error"]["code"], body["error"]["message"]
    if protocol == "mlflow":
        return body["error_code"], body["message"]
    return None, body["error"]  # the Open Inference Protocol's error is a message only


@pytest.mark.parametrize(("protocol", "method", "path", "body"), PREDICTION_ROUTES)
def test_without_a_key_401_in_each_protocols_shape(make_client, protocol, method, path, body):
    client = make_client(open_scopes=())
    answer = getattr(client, method)(path, json=body)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="model-service"'
    code, message = error_of(protocol, answer.json)
    assert code in (None, "unauthorized", "UNAUTHENTICATED")
    assert "needs a key with scope 'predict'" in message


@pytest.mark.parametrize(("protocol", "method", "path", "body"), PREDICTION_ROUTES)
def test_a_key_without_the_scope_403_and_with_it_200(
    make_client, keyed_store, protocol, method, path, body
):
    client = make_client(open_scopes=())
    refused = getattr(client, method)(path, json=body, headers=bearer(keyed_store["read"]))
    assert refused.status_code == 403
    code, message = error_of(protocol, refused.json)
    assert code in (None, "forbidden", "PERMISSION_DENIED")
    assert "'reader' does not grant scope 'predict'" in message
    served = getattr(client, method)(path, json=body, headers=bearer(keyed_store["predict"]))
    assert served.status_code == 200, served.json


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer msk_not-a-key"},
        {"Authorization": "Token abc"},
        {"Authorization": "Basic !!!"},
    ],
)
def test_unknown_keys_and_schemes_are_401(make_client, keyed_store, headers):
    answer = make_client(open_scopes=()).get("/v1/models", headers=headers)
    assert answer.status_code == 401
    assert answer.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/ping", "/health"]
)
def test_health_routes_need_no_key(make_client, path):
    assert make_client(open_scopes=()).get(path).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models",
        f"/v1/models/{IRIS}",
        f"/v1/models/{IRIS}/card",
        f"/v1/models/{IRIS}/drift",
        "/v1/status",
        "/metrics",
        "/openapi.json",
        f"/v2/models/{IRIS}",
    ],
)
def test_read_routes_need_the_read_scope(make_client, keyed_store, path):
    client = make_client(open_scopes=())
    assert client.get(path).status_code == 401
    assert client.get(path, headers=bearer(keyed_store["predict"])).status_code == 403
    assert client.get(path, headers=bearer(keyed_store["read"])).status_code == 200


def test_by_default_predict_and_read_are_open_and_feedback_is_not(make_client, keyed_store):
    client = make_client()
    answer = client.post(f"/v1/models/{IRIS}/predict", json={"instances": [IRIS_ROW]})
    assert answer.status_code == 200
    assert client.get("/v1/models").status_code == 200
    label = {"request_id": answer.json["request_id"], "index": 0, "label": "setosa"}
    refused = client.post(f"/v1/models/{IRIS}/feedback", json=label)
    assert refused.status_code == 401
    assert refused.json["error"]["code"] == "unauthorized"
    assert "scope 'feedback'" in refused.json["error"]["message"]
    # Neither the prediction key nor an admin key may label.
    for name in ("predict", "admin"):
        forbidden = client.post(
            f"/v1/models/{IRIS}/feedback", json=label, headers=bearer(keyed_store[name])
        )
        assert forbidden.status_code == 403
    accepted = client.post(
        f"/v1/models/{IRIS}/feedback", json=label, headers=bearer(keyed_store["feedback"])
    )
    assert accepted.status_code == 200
    assert accepted.json["accepted"] == 1


def test_admin_keys_from_the_file_and_from_the_settings(make_client, keyed_store):
    settings_key = "msk_admin-from-the-settings"
    client = make_client(admin_key_hashes=(digest(settings_key),))
    assert client.post("/v1/admin/reload").status_code == 401
    assert client.post("/v1/admin/reload", headers=bearer(keyed_store["read"])).status_code == 403
    assert client.post("/v1/admin/reload", headers=bearer(keyed_store["admin"])).status_code == 200
    assert client.post("/v1/admin/reload", headers=bearer(settings_key)).status_code == 200


def test_admin_is_never_open():
    with pytest.raises(ValueError, match="admin always needs a key"):
        Settings.from_mapping({"open_scopes": "predict,admin"})


def test_the_gate_key_of_the_settings_reads_and_predicts(make_client):
    gate = "msk_the-gate-of-this-host"
    client = make_client(open_scopes=(), gate_key_hashes=(digest(gate),))
    assert client.get("/v1/models", headers=bearer(gate)).status_code == 200
    answer = client.post(
        f"/v1/models/{IRIS}/predict", json={"instances": [IRIS_ROW]}, headers=bearer(gate)
    )
    assert answer.status_code == 200
    assert client.post("/v1/admin/reload", headers=bearer(gate)).status_code in (401, 403)


def test_a_browser_page_offers_basic_and_takes_the_key_as_password(make_client, keyed_store):
    client = make_client(open_scopes=())
    refused = client.get("/status")
    assert refused.status_code == 401
    assert refused.headers.getlist("WWW-Authenticate") == [
        'Bearer realm="model-service"',
        'Basic realm="model-service"',
    ]
    basic = base64.b64encode(f"me:{keyed_store['read']}".encode()).decode()
    page = client.get("/status", headers={"Authorization": f"Basic {basic}"})
    assert page.status_code == 200
    polled = client.get("/v1/status", headers={"Authorization": f"Basic {basic}"})
    assert polled.status_code == 200


def test_a_revoked_key_is_refused_within_seconds(make_client, store_dir, keyed_store):
    client = make_client(open_scopes=())
    headers = bearer(keyed_store["read"])
    assert client.get("/v1/models", headers=headers).status_code == 200
    KeyRing(store_dir).revoke("reader")
    eventually(lambda: client.get("/v1/models", headers=headers).status_code == 401, timeout=3)
    added = KeyRing(store_dir).create("late", ["read"])
    eventually(lambda: client.get("/v1/models", headers=bearer(added)).status_code == 200, 3)


# -- gRPC ------------------------------------------------------------------------------


@pytest.fixture
def grpc_stub(store_dir, tmp_path):
    settings = Settings.from_mapping(
        {"store": store_dir, "state_dir": tmp_path / "state", "open_scopes": ()}
    )
    server, registry, port = create_server(settings, address="127.0.0.1:0", threads=2)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
    server.stop(None)
    registry.stop()


def infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=IRIS)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(IRIS_ROW)
    return request


def test_grpc_takes_the_same_keys(grpc_stub, keyed_store):
    assert grpc_stub.ServerLive(pb.ServerLiveRequest()).live
    cases = [
        ((), grpc.StatusCode.UNAUTHENTICATED, "unauthorized"),
        ((("authorization", "Bearer msk_wrong"),), grpc.StatusCode.UNAUTHENTICATED, None),
        ((("authorization", f"Bearer {keyed_store['read']}"),), grpc.StatusCode.PERMISSION_DENIED,
         "forbidden"),
    ]  # fmt: skip
    for metadata, status, error_code in cases:
        with pytest.raises(grpc.RpcError) as refused:
            grpc_stub.ModelInfer(infer_request(), metadata=metadata)
        assert refused.value.code() is status
        if error_code:
            assert ("error-code", error_code) in refused.value.trailing_metadata()
    answer = grpc_stub.ModelInfer(
        infer_request(), metadata=(("authorization", f"Bearer {keyed_store['predict']}"),)
    )
    assert answer.model_name == IRIS
    with pytest.raises(grpc.RpcError) as refused:
        grpc_stub.ModelMetadata(pb.ModelMetadataRequest(name=IRIS))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


# -- modelctl keys -----------------------------------------------------------------------


def test_modelctl_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_SERVICE_STATE_DIR", str(tmp_path / "state"))
    store = str(tmp_path / "store")
    runner = CliRunner()
    created = runner.invoke(
        cli, ["keys", "create", "ci", "--scopes", "predict,read", "--expires", "30d",
              "--store", store],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("msk_")
    KeyVerifier(store, usage=KeyUsage(tmp_path / "state")).authorize(key, "predict")
    listed = runner.invoke(cli, ["keys", "list", "--store", store])
    assert listed.exit_code == 0, listed.output
    assert key not in listed.output and digest(key) not in listed.output
    (row,) = [line for line in listed.output.splitlines() if line.startswith("ci ")]
    assert "predict,read" in row
    assert row.split()[-1].endswith("Z")  # last used, on this host
    refused = runner.invoke(cli, ["keys", "create", "x", "--scopes", "root", "--store", store])
    assert refused.exit_code != 0 and "unknown: root" in refused.output
    assert runner.invoke(cli, ["keys", "revoke", "ci", "--store", store]).exit_code == 0
    again = runner.invoke(cli, ["keys", "revoke", "ci", "--store", store])
    assert again.exit_code != 0 and "no key named 'ci'" in again.output


# -- a fleet's authoritative store, its mirrors, backups ------------------------------------


@pytest.fixture
def fleet_store(trained_store_dir, tmp_path):
    """The authoritative store behind a real sshd on loopback (key forced to
    model-store-serve), and a host's mirror of it."""
    authoritative = tmp_path / "authoritative"
    shutil.copytree(trained_store_dir, authoritative)
    command = f"{store_serve()} --store {authoritative}"
    with loopback_sshd(tmp_path / "sshd", command) as server:
        remote = RemoteStore(
            server.url(authoritative), key=server.key, known_hosts=server.known_hosts
        )
        yield server, remote, StoreMirror(remote, ModelStore(tmp_path / "local"))


def test_keys_over_ssh_reach_every_mirror_and_a_wiped_file_keeps_them(fleet_store, tmp_path):
    server, remote, mirror = fleet_store
    env = {
        **os.environ,
        "MODEL_SERVICE_STORE_REMOTE_KEY": str(server.key),
        "MODEL_SERVICE_STORE_REMOTE_KNOWN_HOSTS": str(server.known_hosts),
        "MODEL_SERVICE_STATE_DIR": str(tmp_path / "state"),
    }
    url = str(remote)
    created = subprocess.run(
        [modelctl(), "keys", "create", "ops", "--scopes", "admin", "--store", url],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    listed = subprocess.run(
        [modelctl(), "keys", "list", "--store", url],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "ops" in listed.stdout and key not in listed.stdout
    assert digest(key) not in listed.stdout

    local = mirror.local.root
    assert mirror.sync_once().get("keys") is True
    assert KeyVerifier(local).authorize(key, "admin").name == "ops"
    assert "keys" not in mirror.sync_once()  # in step: nothing written

    remote.keyring().revoke("ops")
    mirror.sync_once()
    with pytest.raises(Unauthorized):
        KeyVerifier(local).authorize(key, "admin")

    # A store wiped of its key file leaves the hosts' keys as they were.
    kept = remote.keyring().create("kept", ["read"])
    mirror.sync_once()
    (remote_root(remote) / KEYS_FILE).unlink()
    assert "keys" not in mirror.sync_once()
    assert KeyVerifier(local).authorize(kept, "read").name == "kept"


def remote_root(remote: RemoteStore) -> Path:
    return Path(remote.url.path)


def test_a_backup_carries_the_keys_and_a_restore_brings_no_revoked_key_back(store, tmp_path):
    ring = KeyRing(store.root)
    revoked = ring.create("revoked-later", ["predict"])
    archive_path = tmp_path / "backup.tar.gz"
    with open(archive_path, "wb") as out:
        archive.write_backup(store, out)
    ring.revoke("revoked-later")

    # Into the live store: its own, newer key file is kept.
    with open(archive_path, "rb") as source:
        assert archive.restore(store, source)["keys"] == "kept"
    assert [key.name for key in ring.list()] == []

    # Into a wiped one: the archive's key file is put back.
    wiped = ModelStore(tmp_path / "wiped")
    with open(archive_path, "rb") as source:
        assert archive.restore(wiped, source)["keys"] == "restored"
    assert KeyVerifier(wiped.root).authorize(revoked, "predict").name == "revoked-later"

    # Left out on request (a store that seeds another).
    with open(tmp_path / "no-keys.tar.gz", "wb") as out:
        manifest = archive.write_backup(store, out, keys=False)
    assert f"store/{KEYS_FILE}" not in manifest["files"]
