"""Publishes that go wrong: a truncated pickle, bytes on disk that are not the ones hashed,
metadata that is not YAML (or not a mapping), a missing file, a full disk. Each fails with a
clear error and leaves the store exactly as it was (no temporary directory, no new version,
aliases and version counter unchanged); the store takes the next publish, and the registry
serves the old version all along."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from service.cli import main
from service.config import Settings
from service.errors import IntegrityError, ModelLoadError, StoreError
from service.files import TEMP_PREFIX
from service.runtime.registry import ModelRegistry
from service.store import ModelStore, parse_ref
from service.store import store as store_module
from tests.test_api import IRIS, IRIS_ROW


def copy_iris(trained_store_dir: Path, root: Path) -> ModelStore:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(trained_store_dir / IRIS, root / IRIS)
    return ModelStore(root)


@pytest.fixture
def store(trained_store_dir, tmp_path) -> ModelStore:
    return copy_iris(trained_store_dir, tmp_path / "model_store")


def good_publish(store: ModelStore) -> tuple[bytes, dict, dict[str, bytes]]:
    """What publishing version 1 again takes: its pickle, metadata and ONNX form."""
    version_dir = store.layout.version_dir(IRIS, 1)
    meta = store.metadata(IRIS, 1)
    meta["description"] = "published again"
    return (
        (version_dir / "model.pkl").read_bytes(),
        meta,
        {"model.onnx": (version_dir / "model.onnx").read_bytes()},
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every file under the store (but the writers' lock) and a digest of its content."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_file()
        else "dir"
        for path in sorted(root.rglob("*"))
        if path.name != ".lock"
    }


def served(store: ModelStore) -> tuple[int, list]:
    """The version the registry serves for the default alias, and its prediction."""
    registry = ModelRegistry(store, Settings.from_mapping({"store": store.root}))
    try:
        model = registry.get(parse_ref(IRIS))
        return model.version, model.predict([IRIS_ROW]).predictions
    finally:
        registry.stop()


def assert_untouched_and_usable(store: ModelStore, before: dict[str, str]) -> None:
    assert not [p for p in store.root.rglob(f"{TEMP_PREFIX}*")], "a temporary file was left"
    assert snapshot(store.root) == before
    assert served(store) == (1, ["setosa"])
    # The next publish takes the next number: the failed one consumed none.
    artifact, meta, extra = good_publish(store)
    assert store.publish(IRIS, artifact, meta, extra_files=extra) == 2
    assert served(store) == (1, ["setosa"])  # production still points at version 1


def test_a_truncated_pickle(store):
    artifact, meta, extra = good_publish(store)
    before = snapshot(store.root)
    with pytest.raises(ModelLoadError, match=r"iris-classifier@2: cannot unpickle model\.pkl"):
        store.publish(IRIS, artifact[: len(artifact) // 2], meta, extra_files=extra)
    assert_untouched_and_usable(store, before)


def test_bytes_on_disk_that_are_not_the_ones_hashed(store, monkeypatch):
    """A write that lands damaged (a failing disk): the load-back check refuses it."""
    artifact, meta, extra = good_publish(store)
    before = snapshot(store.root)
    write = store_module._write_synced

    def damaging(path: Path, data: bytes) -> None:
        if path.name == "model.pkl":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        write(path, data)

    monkeypatch.setattr(store_module, "_write_synced", damaging)
    with pytest.raises(IntegrityError, match=r"model\.pkl has sha256 .* refusing to unpickle"):
        store.publish(IRIS, artifact, meta, extra_files=extra)
    monkeypatch.undo()
    assert_untouched_and_usable(store, before)


@pytest.mark.parametrize(
    ("metadata_text", "message"),
    [
        ("name: [unclosed\n", "not valid YAML"),
        ("- a list\n- not a mapping\n", "expected a YAML mapping"),
    ],
    ids=["not-yaml", "not-a-mapping"],
)
def test_metadata_that_is_not_readable(store, tmp_path, capsys, metadata_text, message):
    artifact, _, _ = good_publish(store)
    (tmp_path / "model.pkl").write_bytes(artifact)
    (tmp_path / "metadata.yaml").write_text(metadata_text)
    before = snapshot(store.root)
    code, said = publish_cli(store, tmp_path / "model.pkl", tmp_path / "metadata.yaml", capsys)
    assert code == 1
    assert message in said
    assert "Traceback" not in said
    assert_untouched_and_usable(store, before)


@pytest.mark.parametrize("missing", ["model", "metadata"])
def test_a_file_to_publish_that_is_missing(store, tmp_path, capsys, missing):
    artifact, _, _ = good_publish(store)
    (tmp_path / "model.pkl").write_bytes(artifact)
    shutil.copy(store.layout.metadata_file(IRIS, 1), tmp_path / "metadata.yaml")
    (tmp_path / ("model.pkl" if missing == "model" else "metadata.yaml")).unlink()
    before = snapshot(store.root)
    code, said = publish_cli(store, tmp_path / "model.pkl", tmp_path / "metadata.yaml", capsys)
    assert code == 2
    assert "does not exist" in said
    assert_untouched_and_usable(store, before)


def publish_cli(store: ModelStore, model: Path, metadata: Path, capsys) -> tuple[int, str]:
    """``modelctl publish`` as the console script runs it: its exit code and what it said."""
    code = main(
        [
            "publish",
            IRIS,
            "--model",
            str(model),
            "--metadata",
            str(metadata),
            "--store",
            str(store.root),
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` mounted on ``path`` for the block (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CI runs as root)")
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(path: Path) -> Path:
    """A file that takes every byte the file system has left."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass
    # A byte at a time, up to the last one.
    with open(filler, "ab", buffering=0) as handle, contextlib.suppress(OSError):
        while handle.write(b"\0"):
            pass
    return filler


def test_a_publish_on_a_full_disk(trained_store_dir, tmp_path):
    with small_disk(tmp_path / "disk", "2m") as disk:
        store = copy_iris(trained_store_dir, disk / "model_store")
        artifact, meta, extra = good_publish(store)
        before = snapshot(store.root)
        filler = fill(disk)
        with pytest.raises(StoreError, match="No space left on device") as caught:
            store.publish(IRIS, artifact, meta, extra_files=extra)
        assert "iris-classifier" in caught.value.message
        assert not [p for p in store.root.rglob(f"{TEMP_PREFIX}*")]
        assert snapshot(store.root) == before
        assert served(store) == (1, ["setosa"])
        filler.unlink()
        assert_untouched_and_usable(store, before)
