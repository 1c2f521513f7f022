"""The authoritative store over SSH (a real sshd on loopback, its key forced to
`model-store-serve`), the mirror a host keeps of it, and backup and restore."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from service import create_app
from service.cli import main
from service.errors import PromotionRefused, ServiceError, StoreError, StoreUnreachable
from service.runtime.model import LoadedModel
from service.store import ModelStore, archive
from service.store.experiments import Shadow, parse_variants
from service.store.mirror import StoreMirror, describe, read_status
from service.store.remote import RemoteStore
from tests.sshd import loopback_sshd, modelctl, store_serve
from tests.support import IRIS


@pytest.fixture
def authoritative(trained_store_dir, tmp_path) -> Path:
    target = tmp_path / "authoritative"
    shutil.copytree(trained_store_dir, target)
    return target


@pytest.fixture
def sshd(authoritative, tmp_path):
    command = f"{store_serve()} --store {authoritative}"
    with loopback_sshd(tmp_path / "sshd", command) as server:
        yield server


@pytest.fixture
def remote(sshd, authoritative) -> RemoteStore:
    return RemoteStore(sshd.url(authoritative), key=sshd.key, known_hosts=sshd.known_hosts)


@pytest.fixture
def mirror(remote, tmp_path) -> StoreMirror:
    return StoreMirror(remote, ModelStore(tmp_path / "local"), verify=LoadedModel)


def test_the_manifest_lists_every_model_with_its_aliases_file(remote, authoritative):
    manifest = remote.manifest()
    assert sorted(manifest["models"]) == ModelStore(authoritative).names()
    aliases_file = authoritative / IRIS / "aliases.yaml"
    assert manifest["models"][IRIS]["aliases"] == aliases_file.read_text()
    assert list(manifest["models"][IRIS]["versions"]) == ["1"]


def test_a_key_runs_store_requests_and_nothing_else(sshd, remote):
    command = [*remote.ssh_command(), "--", "cat /etc/passwd"]
    result = subprocess.run(command, capture_output=True, timeout=30)
    assert result.returncode == 3
    assert json.loads(result.stdout)["error"]["code"] == "bad_store_request"


def test_a_request_for_another_store_path_is_refused(sshd, tmp_path):
    other = RemoteStore(
        sshd.url(tmp_path / "elsewhere"), key=sshd.key, known_hosts=sshd.known_hosts
    )
    with pytest.raises(ServiceError) as caught:
        other.manifest()
    assert caught.value.code == "wrong_store_path"
    assert int(caught.value.status) == 400


def test_an_unknown_host_key_is_refused(sshd, authoritative, tmp_path):
    stranger = tmp_path / "known_hosts_other"
    stranger.write_text(sshd.known_hosts.read_text().replace("AAAA", "BBBB", 1))
    store = RemoteStore(sshd.url(authoritative), key=sshd.key, known_hosts=stranger)
    with pytest.raises(StoreUnreachable):
        store.manifest()


def test_promote_and_rollback_over_ssh_change_the_authoritative_store(remote, authoritative):
    local = ModelStore(authoritative)
    version = republish(local, IRIS)
    assert remote.promote(IRIS, version, reason="better") == 1
    assert local.aliases(IRIS)["production"] == version
    assert remote.rollback(IRIS) == (version, 1)
    assert local.aliases(IRIS)["production"] == 1
    history = local.alias_state(IRIS)["history"]
    assert [entry["action"] for entry in history[-2:]] == ["promote", "rollback"]


def test_a_refused_promotion_keeps_its_reason_and_status(remote, authoritative):
    local = ModelStore(authoritative)
    worse = republish(local, IRIS, test_score=0.0)
    with pytest.raises(PromotionRefused) as caught:
        remote.promote(IRIS, worse)
    assert "worse than" in caught.value.reason
    assert remote.check_promotion(IRIS, worse).reason == caught.value.reason
    assert local.aliases(IRIS)["production"] == 1


def test_unknown_models_answer_not_found(remote):
    with pytest.raises(ServiceError) as caught:
        remote.promote("no-such-model", 1)
    assert int(caught.value.status) == 404


def test_racing_promotes_are_both_applied_in_turn_and_both_recorded(remote, authoritative):
    local = ModelStore(authoritative)
    versions = [republish(local, IRIS), republish(local, IRIS)]
    errors: list[Exception] = []

    def promote(version: int) -> None:
        try:
            remote.promote(IRIS, version, reason=f"race {version}")
        except Exception as exc:  # the test fails on any
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    history = local.alias_state(IRIS)["history"]
    reasons = {entry.get("reason") for entry in history}
    assert {f"race {v}" for v in versions} <= reasons
    assert local.aliases(IRIS)["production"] == history[-1]["to"]


def test_publish_over_ssh_is_verified_on_the_store_host(remote, authoritative):
    local = ModelStore(authoritative)
    source = local.load_artifact(IRIS, 1)
    pickle_bytes = (authoritative / IRIS / "1" / "model.pkl").read_bytes()
    version = remote.publish(IRIS, pickle_bytes, dict(source.metadata))
    assert version == 2
    assert local.metadata(IRIS, 2)["artifact"]["sha256"] == source.metadata["artifact"]["sha256"]
    bad = dict(source.metadata)
    bad["golden"] = {
        **bad["golden"],
        "predictions": ["not-a-class"] * len(bad["golden"]["predictions"]),
    }
    with pytest.raises(ServiceError) as caught:
        remote.publish(IRIS, pickle_bytes, bad)
    assert caught.value.code == "golden_mismatch"
    assert local.versions(IRIS) == [1, 2]


# -- the mirror ------------------------------------------------------------------------


def test_a_mirror_takes_every_version_and_the_aliases_byte_for_byte(mirror, authoritative):
    summary = mirror.sync_once()
    assert summary["problems"] == []
    local = mirror.local
    assert local.names() == ModelStore(authoritative).names()
    for name in local.names():
        for file in ("aliases.yaml", "1/metadata.yaml", "1/model.pkl"):
            assert (local.root / name / file).read_bytes() == (
                authoritative / name / file
            ).read_bytes()
        local.load_artifact(name, 1)  # sha256-verified
    assert mirror.sync_once() == {"fetched": [], "aliases": [], "removed": [], "problems": []}


def test_a_mirror_that_keeps_its_connection_open_leaves_nothing_running(
    sshd, authoritative, tmp_path
):
    shared = RemoteStore(
        sshd.url(authoritative), key=sshd.key, known_hosts=sshd.known_hosts, multiplex=True
    )
    mirror = StoreMirror(shared, ModelStore(tmp_path / "local"), verify=LoadedModel)
    mirror.sync_once()
    check = [*shared.ssh_command(), "-O", "check"]
    assert subprocess.run(check, capture_output=True, timeout=10).returncode == 0
    assert mirror.sync_once()["problems"] == []
    control_dir = Path(shared.control_dir)
    assert any(control_dir.iterdir())  # the shared connection's socket
    shared.close()
    assert shared.control_dir is None and not control_dir.exists()
    masters = subprocess.run(["pgrep", "-f", "ControlPersist=30"], capture_output=True, text=True)
    assert str(shared.url.port) not in "".join(
        Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        for pid in masters.stdout.split()
        if Path(f"/proc/{pid}/cmdline").exists()
    )


def test_a_promotion_reaches_the_mirror_at_its_next_pass(mirror, remote, authoritative):
    mirror.sync_once()
    version = republish(ModelStore(authoritative), IRIS)
    remote.promote(IRIS, version)
    summary = mirror.sync_once()
    assert summary["fetched"] == [f"{IRIS}@{version}"]
    assert summary["aliases"] == [IRIS]
    assert mirror.local.aliases(IRIS)["production"] == version


def test_a_corrupt_version_is_never_taken_and_its_alias_does_not_move(mirror, authoritative):
    mirror.sync_once()
    store = ModelStore(authoritative)
    version = republish(store, IRIS)
    store.promote(IRIS, version)
    pickle_path = authoritative / IRIS / str(version) / "model.pkl"
    data = bytearray(pickle_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pickle_path.write_bytes(bytes(data))
    summary = mirror.sync_once()
    assert any("sha256" in problem for problem in summary["problems"])
    assert not (mirror.local.root / IRIS / str(version)).exists()
    assert mirror.local.aliases(IRIS)["production"] == 1
    assert not list((mirror.local.root / IRIS).glob(".tmp-*"))


def test_a_copy_damaged_on_the_hosts_disk_is_fetched_again_at_start(mirror, remote):
    mirror.sync_once()
    pickle_path = mirror.local.root / IRIS / "1" / "model.pkl"
    good = pickle_path.read_bytes()
    pickle_path.write_bytes(good + b"x")
    mirror.sync_once()  # a running agent trusts what it verified itself
    assert pickle_path.read_bytes() != good
    restarted = StoreMirror(remote, mirror.local, verify=LoadedModel)
    summary = restarted.sync_once()
    assert summary["fetched"] == [f"{IRIS}@1"]
    assert pickle_path.read_bytes() == good


def test_an_unreachable_store_changes_nothing_and_says_so(mirror, sshd):
    mirror.sync_once()
    before = sorted(p.relative_to(mirror.local.root) for p in mirror.local.root.rglob("*"))
    sshd.stop()
    stop = threading.Event()
    stop.set()  # one pass, then return
    mirror.run(1.0, stop)
    status = read_status(mirror.local.root)
    assert status["reachable"] is False
    assert "cannot be reached" in status["error"]
    view = describe(status, 1.0, time.time())
    assert view["reachable"] is False and view["seconds_since_sync"] >= 0
    after = sorted(p.relative_to(mirror.local.root) for p in mirror.local.root.rglob("*"))
    assert [p for p in after if p.name != ".sync-status.json"] == [
        p for p in before if p.name != ".sync-status.json"
    ]
    with pytest.raises(StoreUnreachable):
        mirror.sync_once()


def test_an_emptied_authoritative_store_does_not_empty_the_hosts(mirror, authoritative):
    mirror.sync_once()
    for child in authoritative.iterdir():
        shutil.rmtree(child)
    with pytest.raises(StoreError, match="holds no model"):
        mirror.sync_once()
    assert IRIS in mirror.local.names()


def test_readyz_reports_the_mirror(store_dir, tmp_path):
    app = create_app(
        {
            "store": store_dir,
            "state_dir": tmp_path / "monitoring",
            "store_remote": "ssh://model-service@127.0.0.1:1/srv/store",
            "instance_name": "app7",
        }
    )
    try:
        client = app.test_client()
        answer = client.get("/readyz")
        assert answer.status_code == 200  # no mirror has run, but the models are loaded
        assert answer.json["store_sync"]["reachable"] is False
        assert answer.headers["X-Served-By"] == "app7"
        status = {
            "remote": "x",
            "reachable": True,
            "error": None,
            "problems": [],
            "last_attempt": time.time(),
            "last_success": time.time() - 2,
        }
        (store_dir / ".sync-status.json").write_text(json.dumps(status))
        sync = client.get("/readyz").json["store_sync"]
        assert sync["reachable"] is True and 1.5 < sync["seconds_since_sync"] < 30
        scraped = client.get("/metrics").get_data(as_text=True)
        assert "model_service_store_reachable 1.0" in scraped
        assert "model_service_store_seconds_since_sync" in scraped
    finally:
        app.extensions["model_service"].registry.stop()


# -- backup and restore ----------------------------------------------------------------


def test_backup_then_restore_gives_back_the_same_store(store, tmp_path):
    archive_path = tmp_path / "backup.tar.gz"
    with open(archive_path, "wb") as out:
        manifest = archive.write_backup(store, out)
    aliases_before = {n: store.layout.aliases_file(n).read_bytes() for n in store.names()}
    assert f"store/{IRIS}/1/model.pkl" in manifest["files"]
    version = republish(store, IRIS)
    store.promote(IRIS, version)
    with open(archive_path, "rb") as stream:
        summary = archive.restore(store, stream)
    assert summary["models"] == sorted(aliases_before)
    assert {n: store.layout.aliases_file(n).read_bytes() for n in store.names()} == aliases_before
    assert store.versions(IRIS) == [1]
    assert not list(store.root.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["flip a byte", "drop the manifest", "add a file", "truncate"])
def test_a_damaged_archive_changes_nothing(store, tmp_path, damage):
    archive_path = tmp_path / "backup.tar.gz"
    with open(archive_path, "wb") as out:
        archive.write_backup(store, out)
    damaged = damage_archive(archive_path, damage)
    version = republish(store, IRIS)
    store.promote(IRIS, version)
    before = snapshot(store.root)
    with pytest.raises(StoreError):
        archive.restore(store, io.BytesIO(damaged))
    assert snapshot(store.root) == before


def test_backups_taken_while_publishing_are_each_whole(store, tmp_path):
    stop = threading.Event()

    def keep_publishing() -> None:
        while not stop.is_set():
            store.promote(IRIS, republish(store, IRIS), force=True)

    writer = threading.Thread(target=keep_publishing)
    writer.start()
    try:
        for attempt in range(4):
            path = tmp_path / f"backup-{attempt}.tar.gz"
            with open(path, "wb") as out:
                archive.write_backup(store, out)
            target = ModelStore(tmp_path / f"restored-{attempt}")
            with open(path, "rb") as stream:
                archive.restore(target, stream)  # verifies every file and alias
            assert target.aliases(IRIS)["production"] in target.versions(IRIS)
    finally:
        stop.set()
        writer.join(60)


def test_a_backup_carries_the_experiment_and_a_restore_brings_it_back(store, tmp_path, capsys):
    candidate = republish(store, IRIS)
    store.promote(IRIS, candidate, alias="staging")
    running = store.start_experiment(
        IRIS,
        parse_variants(f"production=90,{candidate}=10"),
        shadow=Shadow("staging", 0.5),
    )
    archive_path = tmp_path / "backup.tar.gz"
    with open(archive_path, "wb") as out:
        manifest = archive.write_backup(store, out)
    assert f"store/{IRIS}/experiment.yaml" in manifest["files"]
    before = store.layout.model_dir(IRIS).joinpath("experiment.yaml").read_bytes()
    store.stop_experiment(IRIS)
    store.start_experiment(IRIS, parse_variants("production=50,staging=50"))

    assert main(["restore", str(archive_path), "--store", str(store.root)]) == 0
    assert f"experiments running: {IRIS} ({running.id})" in capsys.readouterr().out
    assert store.layout.model_dir(IRIS).joinpath("experiment.yaml").read_bytes() == before
    assert store.experiment(IRIS) == running
    # Into an empty store as well: versions, aliases and experiment arrive together.
    elsewhere = ModelStore(tmp_path / "elsewhere")
    with open(archive_path, "rb") as stream:
        summary = archive.restore(elsewhere, stream)
    assert summary["experiments"] == {IRIS: running.id}
    assert summary["experiments_stopped"] == []
    assert elsewhere.experiment(IRIS) == running
    assert elsewhere.aliases(IRIS)["staging"] == candidate


def test_restoring_a_model_without_an_experiment_stops_the_running_one(store, tmp_path, capsys):
    archive_path = tmp_path / "backup.tar.gz"
    with open(archive_path, "wb") as out:
        archive.write_backup(store, out)  # no experiment.yaml in it
    candidate = republish(store, IRIS)
    store.start_experiment(IRIS, parse_variants(f"production=90,{candidate}=10"))

    assert main(["restore", str(archive_path), "--store", str(store.root)]) == 0
    assert f"experiment stopped (the archive has none): {IRIS}" in capsys.readouterr().out
    # The experiment named version 2, which the restored model lacks: it is gone with it.
    assert store.versions(IRIS) == [1]
    assert store.experiment(IRIS) is None
    assert not store.layout.model_dir(IRIS).joinpath("experiment.yaml").exists()


@pytest.mark.parametrize("target", ["version", "alias"])
def test_an_archive_whose_experiment_names_what_it_lacks_is_refused(store, tmp_path, target):
    """experiment.yaml edited by hand to name a version or an alias the model lacks."""
    running = store.start_experiment(IRIS, parse_variants("production=50,1=50"))
    path = store.layout.model_dir(IRIS) / "experiment.yaml"
    state = yaml.safe_load(path.read_text())
    missing = "9" if target == "version" else "nightly"
    state["active"]["variants"][1]["name"] = missing
    path.write_text(yaml.safe_dump(state, sort_keys=False))
    archive_path = tmp_path / "backup.tar.gz"
    with open(archive_path, "wb") as out:
        archive.write_backup(store, out)
    elsewhere = ModelStore(tmp_path / "elsewhere")
    republish(store, IRIS)  # the live store moves on meanwhile
    before = snapshot(store.root)
    for target_store in (store, elsewhere):
        with open(archive_path, "rb") as stream, pytest.raises(StoreError) as refused:
            archive.restore(target_store, stream)
        named = f"version {missing}" if target == "version" else f"alias {missing!r}"
        assert f"experiment {running.id} names {named}" in str(refused.value)
    assert snapshot(store.root) == before
    assert elsewhere.names() == []


def test_backup_and_restore_of_a_remote_store_through_modelctl(sshd, authoritative, tmp_path):
    env = {
        **os.environ,
        "MODEL_SERVICE_STORE_REMOTE_KEY": str(sshd.key),
        "MODEL_SERVICE_STORE_REMOTE_KNOWN_HOSTS": str(sshd.known_hosts),
    }
    url = sshd.url(authoritative)
    archive_path = tmp_path / "fleet.tar.gz"
    aliases_before = (authoritative / IRIS / "aliases.yaml").read_bytes()
    run = subprocess.run(
        [modelctl(), "backup", str(archive_path), "--store", url],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for child in authoritative.iterdir():
        shutil.rmtree(child)
    run = subprocess.run(
        [modelctl(), "restore", str(archive_path), "--store", url],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "restored 3 models" in run.stdout
    assert (authoritative / IRIS / "aliases.yaml").read_bytes() == aliases_before
    listing = subprocess.run(
        [modelctl(), "list", "--store", url], env=env, capture_output=True, text=True, timeout=60
    )
    assert IRIS in listing.stdout and "production=1" in listing.stdout
    shown = subprocess.run(
        [modelctl(), "show", f"{IRIS}@production", "--store", url],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"{IRIS}@1  (production)" in shown.stdout


# -- helpers -----------------------------------------------------------------------------


def republish(store: ModelStore, name: str, test_score: float | None = None) -> int:
    """A new version of ``name``: the same pickle and metadata (optionally scored worse)."""
    source = store.load_artifact(name, 1)
    meta = dict(source.metadata)
    if test_score is not None:
        metric = meta["scores"]["primary_metric"]
        scores = yaml.safe_load(yaml.safe_dump(meta["scores"]))
        scores["test"]["model"][metric] = test_score
        meta["scores"] = scores
    data = (store.layout.version_dir(name, 1) / "model.pkl").read_bytes()
    return store.publish(name, data, meta)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def damage_archive(path: Path, damage: str) -> bytes:
    data = path.read_bytes()
    if damage == "truncate":
        return data[: len(data) // 2]
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            members.append((member, tar.extractfile(member).read()))
    if damage == "flip a byte":
        index = next(i for i, (m, _) in enumerate(members) if m.name.endswith("model.pkl"))
        member, body = members[index]
        members[index] = (member, bytes([body[0] ^ 0xFF]) + body[1:])
    elif damage == "drop the manifest":
        members = [(m, b) for m, b in members if m.name != archive.MANIFEST_NAME]
    elif damage == "add a file":
        extra = tarfile.TarInfo(f"store/{IRIS}/1/extra.bin")
        members.insert(0, (extra, b"surprise"))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for member, body in members:
            member.size = len(body)
            tar.addfile(member, io.BytesIO(body))
    return out.getvalue()
