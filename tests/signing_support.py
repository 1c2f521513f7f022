"""What the tests of signed versions share: key pairs, a new version of a demo model, and
the three ways someone who can write a store changes a version."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import yaml

from service.store import ModelStore, signing


class Touch:
    """A pickle that, when unpickled, creates a file: the proof that it was unpickled
    (as any code a crafted pickle runs)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def key_pair(directory: Path) -> tuple[Path, Path]:
    return signing.generate_key_pair(directory)


def republish(store: ModelStore, name: str, source_version: int = 1) -> int:
    """A new version of ``name``: version ``source_version``'s files and metadata, published
    (and signed, if the store has a signing key)."""
    directory = store.layout.version_dir(name, source_version)
    meta = yaml.safe_load((directory / "metadata.yaml").read_text())
    for key in ("version", "artifact", "created_at"):
        meta.pop(key)
    reserved = {"model.pkl", "metadata.yaml", signing.SIGNATURE_FILE}
    extra = {p.name: p.read_bytes() for p in directory.iterdir() if p.name not in reserved}
    pickled = (directory / "model.pkl").read_bytes()
    return store.publish(name, pickled, meta, extra_files=extra)


def replace_pickle_and_its_sha256(directory: Path, marker: Path) -> None:
    """The attack a sha256 cannot stop: a crafted pickle, and metadata that records its
    sha256 and size."""
    data = pickle.dumps(Touch(marker))
    (directory / "model.pkl").write_bytes(data)
    meta_path = directory / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["artifact"]["sha256"] = hashlib.sha256(data).hexdigest()
    meta["artifact"]["size"] = len(data)
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))


def edit_metadata(directory: Path) -> None:
    """A change to what the metadata says (here its description), after signing."""
    meta_path = directory / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["description"] = "changed after it was signed"
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
