"""modelctl experiment start / status / stop on a store directory and on a fleet's
authoritative store over SSH (a real sshd on loopback), and the store mirror carrying
experiment.yaml to a host once what it names is verified there."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from service import create_app
from service.cli import cli
from service.errors import ServiceError
from service.runtime.model import LoadedModel
from service.store import ModelStore
from service.store.experiments import EXPERIMENT_FILE, Shadow, parse_variants
from service.store.mirror import StoreMirror
from service.store.remote import RemoteStore
from tests.sshd import loopback_sshd, store_serve
from tests.support import IRIS
from tests.test_remote_store import republish


def staged_copy(trained_store_dir: Path, target: Path) -> ModelStore:
    """The demo store with iris version 2 published as staging."""
    shutil.copytree(trained_store_dir, target)
    store = ModelStore(target)
    data = (store.layout.version_dir(IRIS, 1) / "model.pkl").read_bytes()
    store.publish(IRIS, data, store.metadata(IRIS, 1), aliases=("staging",))
    return store


@pytest.fixture
def local(trained_store_dir, tmp_path) -> ModelStore:
    return staged_copy(trained_store_dir, tmp_path / "store")


def modelctl(*args: str, env: dict[str, str] | None = None):
    return CliRunner(env=env).invoke(cli, ["experiment", *map(str, args)])


def snapshot(store: ModelStore) -> dict[str, bytes]:
    return {
        str(p.relative_to(store.root)): p.read_bytes()
        for p in sorted(store.root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# -- a store directory -------------------------------------------------------------------


def test_start_status_stop(local):
    where = ("--store", local.root)
    started = modelctl(
        "start", IRIS, "--variants", "production=90,staging=10", "--key-header", "X-Client-ID",
        "--shadow", "2", "--shadow-share", "0.25", "--reason", "try v2", *where,
    )  # fmt: skip
    assert started.exit_code == 0, started.output
    experiment = local.experiment(IRIS)
    assert started.output.splitlines() == [
        f"{IRIS}: started experiment {experiment.id}",
        "  variants:  production     90%  -> version 1",
        "             staging        10%  -> version 2",
        "  key:       header X-Client-ID",
        "  shadow:    2 on 25% of the requests -> version 2",
        "  report:    alpha 0.05, min effect 0.02",
    ]
    assert experiment.shadow == Shadow("2", 0.25)

    shown = modelctl("status", IRIS, *where)
    assert shown.exit_code == 0
    lines = shown.output.splitlines()
    assert lines[0] == f"{IRIS}: experiment {experiment.id} (ab), started {experiment.started_at}"
    assert lines[-2] == "history (newest last):"
    assert lines[-1].endswith(
        f'start    {experiment.id}  (try v2)  variants={{"production": 90, "staging": 10}}'
    )
    as_json = json.loads(modelctl("status", IRIS, "--json", *where).output)
    assert as_json["experiment"]["variants"][1] == {"name": "staging", "weight": 10, "version": 2}

    stopped = modelctl("stop", IRIS, "--reason", "enough", *where)
    assert stopped.exit_code == 0
    assert stopped.output == (
        f"{IRIS}: stopped experiment {experiment.id}; requests go to production again\n"
    )
    after = modelctl("status", IRIS, *where).output.splitlines()
    assert after[0] == f"{IRIS}: no experiment"
    assert after[-1].endswith(f"stop     {experiment.id}  (enough)")


def test_a_shadow_alone_serves_the_default_alias(local):
    result = modelctl("start", IRIS, "--shadow", "staging", "--store", local.root)
    assert result.exit_code == 0, result.output
    experiment = local.experiment(IRIS)
    assert [(v.name, v.weight) for v in experiment.variants] == [("production", 100)]
    assert experiment.shadow == Shadow("staging", 0.1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "production=90,7=10"], "model 'iris-classifier' has no version 7"),
        (["--variants", "production=90,beta=10"], "has no alias 'beta'"),
        (["--variants", "production=90,staging=20"], "add up to 100; these add up to 110"),
        (["--variants", "production:90"], "needs a weight: write it as NAME=WEIGHT"),
        (["--variants", "production=ninety,staging=10"], "weight 'ninety' is not a number"),
        (["--variants", "production=100", "--shadow", "8"], "has no version 8"),
        (["--variants", "production=100", "--key-header", "X Id"], "not an HTTP header name"),
        (["--variants", "production=100", "--alpha", "0.7"], "alpha must be in (0, 0.5]"),
        (["--variants", "production=100", "--shadow-share", "0.5"], "needs --shadow"),
        ([], "give --variants"),
    ],
)
def test_bad_starts_exit_non_zero_with_one_line_and_change_nothing(local, args, message):
    before = snapshot(local)
    result = modelctl("start", IRIS, *args, "--store", local.root)
    assert result.exit_code != 0
    assert message in result.output
    assert len([line for line in result.output.splitlines() if "Error" in line]) == 1
    assert snapshot(local) == before


def test_a_second_start_and_a_stop_without_experiment_are_refused(local):
    where = ("--store", local.root)
    assert modelctl("start", IRIS, "--variants", "production=100", *where).exit_code == 0
    before = snapshot(local)
    again = modelctl("start", IRIS, "--variants", "staging=100", *where)
    assert again.exit_code == 1
    assert again.output.startswith(f"Error: model '{IRIS}' already runs experiment ")
    assert snapshot(local) == before
    assert modelctl("stop", IRIS, *where).exit_code == 0
    nothing = modelctl("stop", IRIS, *where)
    assert (nothing.exit_code, nothing.output) == (1, f"Error: model '{IRIS}' runs no experiment\n")
    unknown = modelctl("status", "no-such-model", *where)
    assert unknown.exit_code == 1 and "no model named 'no-such-model'" in unknown.output


# -- a fleet's authoritative store over SSH ----------------------------------------------


@pytest.fixture
def fleet(trained_store_dir, tmp_path):
    """The authoritative store behind a loopback sshd, a RemoteStore on it, and the
    environment modelctl reaches it with."""
    authoritative = staged_copy(trained_store_dir, tmp_path / "authoritative")
    with loopback_sshd(tmp_path / "sshd", f"{store_serve()} --store {authoritative.root}") as sshd:
        remote = RemoteStore(
            sshd.url(authoritative.root), key=sshd.key, known_hosts=sshd.known_hosts
        )
        env = {
            "MODEL_SERVICE_STORE_REMOTE_KEY": str(sshd.key),
            "MODEL_SERVICE_STORE_REMOTE_KNOWN_HOSTS": str(sshd.known_hosts),
        }
        yield authoritative, remote, env


def test_modelctl_drives_the_authoritative_store_over_ssh(fleet):
    authoritative, remote, env = fleet
    where = ("--store", str(remote.url))
    started = modelctl("start", IRIS, "--variants", "production=80,staging=20", *where, env=env)
    assert started.exit_code == 0, started.output
    assert "             staging        20%  -> version 2" in started.output.splitlines()
    experiment = authoritative.experiment(IRIS)
    assert [(v.name, v.weight) for v in experiment.variants] == [
        ("production", 80),
        ("staging", 20),
    ]

    before = snapshot(authoritative)
    refused = modelctl("start", IRIS, "--variants", "production=100", *where, env=env)
    assert refused.exit_code == 1 and "already runs experiment" in refused.output
    unknown = modelctl("start", "diabetes-regressor", "--variants", "4=100", *where, env=env)
    assert unknown.exit_code == 1 and "has no version 4" in unknown.output
    assert snapshot(authoritative) == before

    shown = json.loads(modelctl("status", IRIS, "--json", *where, env=env).output)
    assert shown["experiment"]["id"] == experiment.id
    assert [v["version"] for v in shown["experiment"]["variants"]] == [1, 2]
    stopped = modelctl("stop", IRIS, *where, env=env)
    assert stopped.exit_code == 0, stopped.output
    assert authoritative.experiment(IRIS) is None


def test_a_remote_store_offers_every_experiment_operation(fleet):
    authoritative, remote, _ = fleet
    assert remote.experiment(IRIS) is None and remote.experiment_signature(IRIS) is None
    started = remote.start_experiment(
        IRIS, parse_variants("production=95,staging=5"), kind="canary", reason="ramp",
        extra={"steps": [5, 50, 100]},
    )  # fmt: skip
    assert authoritative.experiment(IRIS) == remote.experiment(IRIS) == started
    signature = remote.experiment_signature(IRIS)
    moved = remote.set_experiment_weights(IRIS, {"staging": 50, "production": 50}, reason="step")
    assert moved.id == started.id and [v.weight for v in moved.variants] == [50, 50]
    assert remote.experiment_signature(IRIS) != signature
    remote.note_experiment(IRIS, "verdict", reason="no harm", extra={"p_value": 0.31})
    with pytest.raises(ServiceError) as caught:
        remote.set_experiment_weights(IRIS, {"staging": 70})
    assert caught.value.code == "invalid_experiment" and "add up to 100" in caught.value.message
    remote.stop_experiment(IRIS, action="rollback", reason="worse", extra={"errors": 3})
    history = remote.experiment_state(IRIS)["history"]
    assert [e["action"] for e in history] == ["start", "weights", "verdict", "rollback"]
    assert history[0]["steps"] == [5, 50, 100] and history[0]["kind"] == "canary"
    assert history[2]["p_value"] == 0.31 and history[3]["errors"] == 3
    with pytest.raises(ServiceError) as caught:
        remote.stop_experiment(IRIS)
    assert int(caught.value.status) == 404 and caught.value.code == "experiment_not_found"
    with pytest.raises(ServiceError) as caught:
        remote.start_experiment(IRIS, parse_variants("9=100"))
    assert int(caught.value.status) == 404 and caught.value.code == "version_not_found"


# -- the mirror ----------------------------------------------------------------------------


def test_the_mirror_copies_experiment_yaml_once_what_it_names_is_verified(fleet, tmp_path):
    authoritative, remote, _ = fleet
    mirror = StoreMirror(remote, ModelStore(tmp_path / "host"), verify=LoadedModel)
    host = mirror.local
    source = authoritative.layout.model_dir(IRIS) / EXPERIMENT_FILE
    copy = host.layout.model_dir(IRIS) / EXPERIMENT_FILE
    mirror.sync_once()
    assert not copy.exists()

    authoritative.start_experiment(IRIS, parse_variants("production=90,staging=10"))
    summary = mirror.sync_once()
    assert summary["experiments"] == [IRIS] and summary["problems"] == []
    assert copy.read_bytes() == source.read_bytes()
    assert "experiments" not in mirror.sync_once()  # in step: nothing to copy again

    # A version this host cannot verify: its experiment stays as it was.
    authoritative.stop_experiment(IRIS)
    broken = republish(authoritative, IRIS)
    pickle_path = authoritative.layout.version_dir(IRIS, broken) / "model.pkl"
    pickle_path.write_bytes(pickle_path.read_bytes() + b"damage")
    authoritative.start_experiment(IRIS, parse_variants(f"production=90,{broken}=10"))
    running_here = copy.read_bytes()
    summary = mirror.sync_once()
    assert any(f"names {broken}, not verified here" in p for p in summary["problems"])
    assert copy.read_bytes() == running_here
    assert host.experiment(IRIS).variants[1].name == "staging"

    # Once the version is whole, the experiment follows it.
    good = (authoritative.layout.version_dir(IRIS, 1) / "model.pkl").read_bytes()
    pickle_path.write_bytes(good)
    summary = mirror.sync_once()
    assert summary["problems"] == [] and summary["experiments"] == [IRIS]
    assert host.experiment(IRIS).variants[1].name == str(broken)

    # A stop arrives, and so does a removed file.
    authoritative.stop_experiment(IRIS)
    mirror.sync_once()
    assert host.experiment(IRIS) is None and copy.read_bytes() == source.read_bytes()
    source.unlink()
    assert mirror.sync_once()["experiments"] == [IRIS]
    assert not copy.exists()


def test_the_mirror_keeps_a_hand_broken_experiment_off_the_host(fleet, tmp_path):
    authoritative, remote, _ = fleet
    mirror = StoreMirror(remote, ModelStore(tmp_path / "host"), verify=LoadedModel)
    authoritative.start_experiment(IRIS, parse_variants("production=100"))
    mirror.sync_once()
    copy = mirror.local.layout.model_dir(IRIS) / EXPERIMENT_FILE
    before = copy.read_bytes()
    source = authoritative.layout.model_dir(IRIS) / EXPERIMENT_FILE
    source.write_text(source.read_text().replace("weight: 100", "weight: 120"))
    summary = mirror.sync_once()
    assert any("add up to 100" in p for p in summary["problems"])
    assert copy.read_bytes() == before


def test_a_fleet_hosts_admin_api_starts_on_the_authoritative_store(fleet, tmp_path):
    """As its promote: the host's own store changes only when its mirror copies the file."""
    authoritative, remote, env = fleet
    host_store = tmp_path / "host"
    shutil.copytree(authoritative.root, host_store)
    key = "fleet-admin-key"
    app = create_app(
        {
            "store": host_store,
            "state_dir": tmp_path / "state",
            "admin_key_hashes": (hashlib.sha256(key.encode()).hexdigest(),),
            "store_remote": str(remote.url),
            "store_remote_key": env["MODEL_SERVICE_STORE_REMOTE_KEY"],
            "store_remote_known_hosts": env["MODEL_SERVICE_STORE_REMOTE_KNOWN_HOSTS"],
        }
    )
    try:
        client = app.test_client()
        auth = {"Authorization": f"Bearer {key}"}
        started = client.post(
            f"/v1/admin/experiments/{IRIS}", json={"variants": "production=50,2=50"}, headers=auth
        )
        assert started.status_code == 200, started.json
        assert authoritative.experiment(IRIS).id == started.json["experiment"]["id"]
        assert ModelStore(host_store).experiment(IRIS) is None  # until the mirror's pass
        StoreMirror(remote, ModelStore(host_store), verify=LoadedModel).sync_once()
        assert ModelStore(host_store).experiment(IRIS).id == started.json["experiment"]["id"]
        refused = client.post(
            f"/v1/admin/experiments/{IRIS}", json={"variants": "production=100"}, headers=auth
        )
        assert refused.status_code == 409
        assert refused.json["error"]["code"] == "experiment_running"
    finally:
        app.extensions["model_service"].registry.stop()
