"""Signed versions (service.store.signing): what is signed, what a store trusting keys
refuses before unpickling, modelctl's signing commands, and a fleet host's mirror."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from service.cli import main as modelctl
from service.config import Settings
from service.errors import InvalidMetadata, SignatureRefused, StoreError
from service.runtime.model import LoadedModel
from service.runtime.registry import ModelRegistry
from service.store import ModelStore, signing
from service.store.mirror import StoreMirror
from service.store.remote import RemoteStore
from tests.signing_support import edit_metadata, key_pair, replace_pickle_and_its_sha256, republish
from tests.sshd import loopback_sshd, store_serve
from tests.support import IRIS

# A publish over SSH replays the golden example on the store host: slow on a busy machine.
REMOTE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("signing-keys")
    return {"trusted": key_pair(base / "trusted"), "other": key_pair(base / "other")}


@pytest.fixture
def signed(store_dir, keys) -> tuple[ModelStore, int]:
    """The demo store, and a version 2 of iris published and signed with the trusted key."""
    publisher = ModelStore(store_dir, signing_key=keys["trusted"][0])
    return publisher, republish(publisher, IRIS)


def trusting(store_dir: Path, keys) -> ModelStore:
    return ModelStore(store_dir, trusted_keys=[keys["trusted"][1]])


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_replaces_one(tmp_path):
    assert modelctl(["signing", "keygen", "--out", str(tmp_path / "k")]) == 0
    private, public = tmp_path / "k" / "signing-key.pem", tmp_path / "k" / "signing-key.pub.pem"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = private.read_bytes()
    assert modelctl(["signing", "keygen", "--out", str(tmp_path / "k")]) == 1
    assert private.read_bytes() == before


def test_a_signed_version_covers_every_file_but_its_signature_and_loads(signed, keys):
    publisher, version = signed
    directory = publisher.layout.version_dir(IRIS, version)
    assert {p.name for p in directory.iterdir()} == {
        "model.pkl",
        "metadata.yaml",
        "model.onnx",
        "model.sig",
    }
    store = trusting(publisher.root, keys)
    artifact = store.load_artifact(IRIS, version)
    assert artifact.metadata["version"] == version
    # Nothing left behind by signing inside the version directory.
    assert not list(directory.glob(".tmp-*"))


def test_signed_metadata_that_is_not_yaml_is_invalid_metadata(signed, keys):
    publisher, version = signed
    directory = publisher.layout.version_dir(IRIS, version)
    (directory / "metadata.yaml").write_text("name: [iris\n")
    signing.sign_version(directory, keys["trusted"][0])
    with pytest.raises(InvalidMetadata, match="not valid YAML"):
        trusting(publisher.root, keys).load_artifact(IRIS, version)


def test_a_pickle_rewritten_with_its_sha256_is_unpickled_without_trust_and_refused_with_it(
    signed, keys, tmp_path
):
    publisher, version = signed
    marker = tmp_path / "unpickled"
    replace_pickle_and_its_sha256(publisher.layout.version_dir(IRIS, version), marker)
    # What the sha256 alone allows: the crafted pickle runs.
    with pytest.raises(Exception):  # noqa: B017 (the object it builds is no estimator)
        LoadedModel(ModelStore(publisher.root).load_artifact(IRIS, version))
    assert marker.exists()
    marker.unlink()
    with pytest.raises(SignatureRefused) as refused:
        trusting(publisher.root, keys).load_artifact(IRIS, version)
    assert refused.value.reason == "mismatch"
    assert "changed: metadata.yaml, model.pkl" in refused.value.message
    assert not marker.exists()


def test_metadata_edited_after_signing_is_refused(signed, keys):
    publisher, version = signed
    edit_metadata(publisher.layout.version_dir(IRIS, version))
    with pytest.raises(SignatureRefused) as refused:
        trusting(publisher.root, keys).load_artifact(IRIS, version)
    assert refused.value.reason == "mismatch"
    assert "changed: metadata.yaml" in refused.value.message


def test_a_file_added_to_a_signed_version_is_refused(signed, keys):
    publisher, version = signed
    (publisher.layout.version_dir(IRIS, version) / "notes.txt").write_text("added")
    with pytest.raises(SignatureRefused, match=r"added: notes\.txt"):
        trusting(publisher.root, keys).load_artifact(IRIS, version)


def test_a_version_signed_by_a_key_not_trusted_is_refused(store_dir, keys):
    version = republish(ModelStore(store_dir, signing_key=keys["other"][0]), IRIS)
    with pytest.raises(SignatureRefused) as refused:
        trusting(store_dir, keys).load_artifact(IRIS, version)
    assert refused.value.reason == "untrusted_key"
    # Trusting both keys, it loads.
    both = ModelStore(store_dir, trusted_keys=[keys["trusted"][1], keys["other"][1]])
    assert both.load_artifact(IRIS, version).metadata["version"] == version


def test_unsigned_versions_load_without_trusted_keys_and_are_refused_with_them(store_dir, keys):
    assert ModelStore(store_dir).load_artifact(IRIS, 1).metadata["version"] == 1
    with pytest.raises(SignatureRefused) as refused:
        trusting(store_dir, keys).load_artifact(IRIS, 1)
    assert refused.value.reason == "unsigned"


def test_a_registry_tells_its_refusal_listeners(store_dir, keys):
    registry = ModelRegistry(trusting(store_dir, keys), Settings.from_mapping({"store": store_dir}))
    heard = []
    registry.refusal_listeners.append(lambda *args: heard.append(args))
    try:
        registry.refresh()  # the aliased versions: unsigned, refused
    finally:
        registry.stop()
    assert (IRIS, 1, "unsigned") in heard
    assert registry.loaded() == []


def test_a_publisher_that_trusts_keys_cannot_publish_unsigned(store_dir, keys):
    with pytest.raises(SignatureRefused):
        republish(trusting(store_dir, keys), IRIS)
    assert ModelStore(store_dir).versions(IRIS) == [1]


def test_amending_a_signed_version_needs_the_key_and_signs_it_again(signed, keys):
    publisher, version = signed
    meta_path = publisher.layout.metadata_file(IRIS, version)
    before = meta_path.read_bytes()

    def update(meta):
        meta["tags"] = [*meta.get("tags", []), "amended"]
        return meta

    with pytest.raises(StoreError, match="needs the signing key"):
        ModelStore(publisher.root).amend(IRIS, version, {}, update)
    assert meta_path.read_bytes() == before
    publisher.amend(IRIS, version, {"notes.txt": b"added"}, update)
    artifact = trusting(publisher.root, keys).load_artifact(IRIS, version)
    assert "amended" in artifact.metadata["tags"]


def test_a_wrong_trusted_key_setting_fails_at_once(store_dir, keys, tmp_path):
    with pytest.raises(StoreError, match="not a PEM public key"):
        ModelStore(store_dir, trusted_keys=[keys["trusted"][0]])
    with pytest.raises(StoreError, match=r"missing\.pem"):
        ModelStore(store_dir, trusted_keys=[tmp_path / "missing.pem"])


def test_modelctl_sign_and_verify(store_dir, keys, capsys):
    private, public = keys["trusted"]
    store = ["--store", str(store_dir)]
    assert modelctl(["verify", IRIS, "--trusted", str(public), *store]) == 1
    assert f"REFUSED {IRIS}@1: unsigned" in capsys.readouterr().out
    assert modelctl(["sign", "--unsigned", "--key", str(private), *store]) == 0
    signed = capsys.readouterr().out
    assert f"signed {IRIS}@1" in signed and "signed diabetes-regressor@1" in signed
    assert modelctl(["verify", f"{IRIS}@1", "--trusted", str(public), *store]) == 0
    assert f"ok {IRIS}@1 (signed by key {signing.key_id(public)})" in capsys.readouterr().out
    assert modelctl(["verify", IRIS, "--trusted", str(keys["other"][1]), *store]) == 1
    assert "untrusted_key" in capsys.readouterr().out


def test_modelctl_does_not_sign_a_damaged_pickle(store_dir, keys):
    pickle_path = store_dir / IRIS / "1" / "model.pkl"
    pickle_path.write_bytes(pickle_path.read_bytes() + b"x")
    private = str(keys["trusted"][0])
    assert modelctl(["sign", f"{IRIS}@1", "--key", private, "--store", str(store_dir)]) == 1
    assert not (store_dir / IRIS / "1" / "model.sig").exists()


def test_publish_signs_with_the_signing_key_setting(store_dir, keys, tmp_path, monkeypatch):
    source = store_dir / IRIS / "1"
    meta = tmp_path / "metadata.yaml"
    fields = yaml.safe_load((source / "metadata.yaml").read_text())
    fields.pop("backends", None)  # its model.onnx is not published here
    meta.write_text(yaml.safe_dump(fields))
    monkeypatch.setenv("MODEL_SERVICE_SIGNING_KEY", str(keys["trusted"][0]))
    args = ["--model", str(source / "model.pkl"), "--metadata", str(meta)]
    assert modelctl(["publish", IRIS, *args, "--store", str(store_dir)]) == 0
    assert trusting(store_dir, keys).load_artifact(IRIS, 2).metadata["version"] == 2


# -- a fleet host's mirror --------------------------------------------------------------


@pytest.fixture
def authoritative(trained_store_dir, tmp_path, keys) -> ModelStore:
    """The store host's store, its versions signed with the trusted key."""
    import shutil

    root = tmp_path / "authoritative"
    shutil.copytree(trained_store_dir, root)
    store = ModelStore(root, signing_key=keys["trusted"][0])
    for name in store.names():
        store.sign(name, 1)
    return store


@pytest.fixture
def remote(authoritative, tmp_path):
    command = f"{store_serve()} --store {authoritative.root}"
    with loopback_sshd(tmp_path / "sshd", command) as server:
        yield RemoteStore(
            server.url(authoritative.root),
            key=server.key,
            known_hosts=server.known_hosts,
            timeout=REMOTE_TIMEOUT,
        )


def test_a_mirror_refuses_a_tampered_version_and_keeps_its_aliases(
    authoritative, remote, keys, tmp_path
):
    mirror = StoreMirror(remote, trusting(tmp_path / "local", keys), verify=LoadedModel)
    assert sorted(mirror.sync_once()["fetched"]) == [
        "breast-cancer-classifier@1",
        "diabetes-regressor@1",
        f"{IRIS}@1",
    ]
    version = republish(authoritative, IRIS)
    authoritative.promote(IRIS, version, force=True)
    marker = tmp_path / "unpickled"
    replace_pickle_and_its_sha256(authoritative.layout.version_dir(IRIS, version), marker)
    summary = mirror.sync_once()
    assert any("changed after it was signed" in problem for problem in summary["problems"])
    assert not marker.exists()
    assert not mirror.local.layout.version_dir(IRIS, version).exists()
    assert mirror.local.aliases(IRIS)["production"] == 1


def test_a_version_signed_after_a_mirror_took_it_is_fetched_again(
    authoritative, remote, keys, tmp_path
):
    unsigned = republish(ModelStore(authoritative.root), IRIS)
    mirror = StoreMirror(remote, ModelStore(tmp_path / "local"), verify=LoadedModel)
    mirror.sync_once()
    local_signature = mirror.local.layout.version_dir(IRIS, unsigned) / signing.SIGNATURE_FILE
    assert not local_signature.exists()
    authoritative.sign(IRIS, unsigned)
    assert mirror.sync_once()["fetched"] == [f"{IRIS}@{unsigned}"]
    assert trusting(mirror.local.root, keys).load_artifact(IRIS, unsigned)


def test_a_publisher_signs_what_it_publishes_to_a_fleets_store(
    authoritative, remote, keys, tmp_path, monkeypatch
):
    directory = authoritative.layout.version_dir(IRIS, 1)
    meta = yaml.safe_load((directory / "metadata.yaml").read_text())
    for key in ("version", "artifact", "created_at"):
        meta.pop(key)
    extra = {"model.onnx": (directory / "model.onnx").read_bytes()}
    publisher = RemoteStore(
        str(remote.url), key=remote.key, known_hosts=remote.known_hosts,
        timeout=REMOTE_TIMEOUT, signing_key=keys["trusted"][0],
    )  # fmt: skip
    version = publisher.publish(
        IRIS, (directory / "model.pkl").read_bytes(), meta, extra_files=extra
    )
    assert trusting(authoritative.root, keys).load_artifact(IRIS, version)
    # modelctl sign --store ssh://… signs what was published unsigned.
    unsigned = remote.publish(IRIS, (directory / "model.pkl").read_bytes(), meta)
    monkeypatch.setenv("MODEL_SERVICE_STORE_REMOTE_KEY", str(remote.key))
    monkeypatch.setenv("MODEL_SERVICE_STORE_REMOTE_KNOWN_HOSTS", str(remote.known_hosts))
    monkeypatch.setenv("MODEL_SERVICE_STORE_REMOTE_TIMEOUT", str(REMOTE_TIMEOUT))
    key = str(keys["trusted"][0])
    assert modelctl(["sign", "--unsigned", "--key", key, "--store", str(remote.url)]) == 0
    assert trusting(authoritative.root, keys).load_artifact(IRIS, unsigned)
    public = str(keys["trusted"][1])
    assert modelctl(["verify", IRIS, "--trusted", public, "--store", str(remote.url)]) == 0


def test_what_is_unpickled_is_what_was_verified_even_if_the_disk_changes_after(
    signed, keys, tmp_path, monkeypatch
):
    publisher, version = signed
    directory = publisher.layout.version_dir(IRIS, version)
    marker = tmp_path / "unpickled"
    check = signing.verify_version

    def then_swapped(*args, **kwargs):
        verified = check(*args, **kwargs)
        replace_pickle_and_its_sha256(directory, marker)  # the instant after the check
        return verified

    monkeypatch.setattr(signing, "verify_version", then_swapped)
    artifact = trusting(publisher.root, keys).load_artifact(IRIS, version)
    assert not marker.exists()
    assert type(artifact.estimator).__name__ == "Pipeline"


def test_signing_a_served_version_is_a_change_the_workers_see(store_dir, keys):
    """A served version signed again (modelctl optimize re-signs what it amends) is loaded
    again by the workers: they poll metadata_signature, which covers model.sig."""
    store = ModelStore(store_dir, signing_key=keys["trusted"][0])
    before = store.metadata_signature(IRIS, 1)
    store.sign(IRIS, 1)
    assert store.metadata_signature(IRIS, 1) != before
