"""Backup and restore of a whole store: one gzip'd tar with a sha256 manifest.

A backup holds every model's aliases.yaml (aliases, their history, the
rollback stacks), its experiment.yaml (the running experiment and the history of
every one), its version counter and every file of every version, the key
file (digests of the API keys) unless told not to, then ``MANIFEST.json`` with
the sha256 and size of each. It is taken under every
model's lock, so no publish or promote lands half inside it.

A restore reads the whole archive into a scratch directory inside the store
and checks all of it (the manifest, every file's digest, every version's
metadata and artifact, every alias's target, the targets of every running
experiment) before it changes anything: an archive whose experiment serves or
shadows a version or alias the archive's model lacks is refused, as one whose alias
points at a missing version is, so no restore leaves an experiment naming what the
store does not have. Then
it puts the store in the archive's state model by model, under each model's
lock and through renames, so readers (the workers, the mirrors of a fleet)
see each model's old state or its new one, never half of either. A model's
aliases.yaml and experiment.yaml become the archive's; where the archive has none
(experiment.yaml: a backup older than experiments, or a model that never ran one) the
store's is removed, and the summary names the models whose experiment that stopped.
The key file
is put back only into a store that has none (a wiped or new one): a live store's
keys are newer than any backup, and a restore must not bring back a revoked key.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import IO, Any

import yaml

from service.errors import ServiceError, StoreError
from service.files import TEMP_PREFIX, write_atomic
from service.keys import KEYS_FILE, parse_keys
from service.store import metadata as metadata_io
from service.store.experiments import EXPERIMENT_FILE, Experiment
from service.store.layout import (
    ALIASES_FILE,
    COUNTER_FILE,
    METADATA_FILE,
    NAME_PATTERN,
    VERSION_PATTERN,
    is_version_dir,
)
from service.store.store import (
    FILE_NAME_PATTERN,
    ModelStore,
    now_iso,
    put_version_in_place,
    read_verified,
    remove_tree,
)

MANIFEST_NAME = "MANIFEST.json"
ARCHIVE_ROOT = "store"
FORMAT = 1
# Files a model directory keeps besides its versions.
MODEL_FILES = (ALIASES_FILE, EXPERIMENT_FILE, COUNTER_FILE)


def write_backup(store: ModelStore, out: IO[bytes], *, keys: bool = True) -> dict[str, Any]:
    """Write the archive of ``store`` to ``out`` (a stream: no seeking); return its manifest.
    ``keys``: with the key file, where the store has one."""
    files: dict[str, dict[str, Any]] = {}
    names = store.names() if store.exists() else []
    with store.locked_models(names), tarfile.open(fileobj=out, mode="w|gz") as tar:
        keys_path = store.root / KEYS_FILE
        if keys and keys_path.is_file():
            data = keys_path.read_bytes()
            member = f"{ARCHIVE_ROOT}/{KEYS_FILE}"
            _add(tar, member, data)
            files[member] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name in names:
            model_dir = store.layout.model_dir(name)
            paths = [model_dir / f for f in MODEL_FILES if (model_dir / f).is_file()]
            for version_dir in sorted(filter(is_version_dir, model_dir.iterdir())):
                paths += sorted(p for p in version_dir.iterdir() if p.is_file())
            for path in paths:
                data = path.read_bytes()
                member = f"{ARCHIVE_ROOT}/{path.relative_to(store.root).as_posix()}"
                _add(tar, member, data)
                files[member] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        manifest = {
            "format": FORMAT,
            "created_at": now_iso(),
            "models": names,
            "files": files,
        }
        _add(tar, MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def restore(store: ModelStore, archive: IO[bytes]) -> dict[str, Any]:
    """Replace the contents of ``store`` with the archive's, after checking all of it."""
    store.root.mkdir(parents=True, exist_ok=True)
    scratch = store.root / f"{TEMP_PREFIX}restore-{uuid.uuid4().hex}"
    scratch.mkdir()
    try:
        manifest = _extract(archive, scratch)
        models, running = _verify(scratch, manifest)
        stopped = []
        for name in models:
            if _apply_model(store, name, scratch / ARCHIVE_ROOT / name):
                stopped.append(name)
        removed = [name for name in store.names() if name not in models]
        for name in removed:
            store.remove_model(name)
        keys = _apply_keys(store, scratch / ARCHIVE_ROOT / KEYS_FILE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "models": sorted(models),
        "versions": sum(len(v) for v in models.values()),
        "removed": removed,
        "keys": keys,
        "experiments": {name: running[name] for name in sorted(running)},
        "experiments_stopped": sorted(stopped),
    }


# -- reading an archive ------------------------------------------------------------------


def _extract(archive: IO[bytes], scratch: Path) -> dict[str, Any]:
    manifest = None
    try:
        with tarfile.open(fileobj=archive, mode="r|gz") as tar:
            for member in tar:
                if not member.isfile():
                    raise StoreError(f"the archive holds {member.name!r}, which is not a file")
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has contents
                if member.name == MANIFEST_NAME:
                    manifest = _parse_manifest(source.read())
                    continue
                target = scratch / _checked_member_path(member.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as handle:
                    shutil.copyfileobj(source, handle, 1 << 20)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise StoreError(f"the archive cannot be read: {exc}") from None
    if manifest is None:
        raise StoreError(f"the archive has no {MANIFEST_NAME}: not a model store backup")
    return manifest


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError:
        raise StoreError(f"the archive's {MANIFEST_NAME} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"the archive's {MANIFEST_NAME} is not a format-{FORMAT} manifest")
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("models"), list):
        raise StoreError(f"the archive's {MANIFEST_NAME} lists no files or models")
    return manifest


def _checked_member_path(member: str) -> str:
    """store/keys.yaml, store/<name>/(aliases.yaml|experiment.yaml|.last_version|
    <version>/<file>), nothing else."""
    parts = member.split("/")
    if parts == [ARCHIVE_ROOT, KEYS_FILE]:
        return member
    ok = len(parts) >= 3 and parts[0] == ARCHIVE_ROOT and NAME_PATTERN.fullmatch(parts[1])
    if ok and len(parts) == 3:
        ok = parts[2] in MODEL_FILES
    elif ok and len(parts) == 4:
        ok = bool(VERSION_PATTERN.fullmatch(parts[2]) and FILE_NAME_PATTERN.fullmatch(parts[3]))
    else:
        ok = False
    if not ok:
        raise StoreError(f"the archive holds {member!r}, which is no file of a model store")
    return member


def _verify(scratch: Path, manifest: dict[str, Any]) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Every listed file present with its digest, nothing unlisted, every version sound;
    the versions of each model and the id of each running experiment."""
    root = scratch / ARCHIVE_ROOT
    present = {
        path.relative_to(scratch).as_posix() for path in scratch.rglob("*") if path.is_file()
    }
    listed = set(manifest["files"])
    if present != listed:
        missing, extra = sorted(listed - present), sorted(present - listed)
        raise StoreError(
            "the archive does not match its manifest: "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing[:5])}" if missing else "",
                    f"not listed {', '.join(extra[:5])}" if extra else "",
                )
                if part
            )
        )
    for member, entry in manifest["files"].items():
        data = (scratch / member).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.get("sha256") or len(data) != entry.get(
            "size"
        ):
            raise StoreError(f"{member}: its sha256 or size is not the manifest's")
    keys_file = root / KEYS_FILE
    if keys_file.is_file():
        try:
            parse_keys(keys_file.read_text(encoding="utf-8"))
        except ValueError as exc:  # UnicodeDecodeError is one too
            raise StoreError(f"the archive's {KEYS_FILE} is not a key file: {exc}") from None
    models: dict[str, list[int]] = {}
    running: dict[str, str] = {}
    for name in manifest["models"]:
        model_dir = root / str(name)
        if not NAME_PATTERN.fullmatch(str(name)) or not model_dir.is_dir():
            raise StoreError(f"the manifest lists model {name!r}, which the archive lacks")
        versions = sorted(int(p.name) for p in model_dir.iterdir() if is_version_dir(p))
        for version in versions:
            _verify_version(model_dir / str(version), name, version)
        aliases = _verify_aliases(model_dir, name, versions)
        models[name] = versions
        experiment = _verify_experiment(model_dir, name, versions, aliases)
        if experiment:
            running[name] = experiment
    return models, running


def _verify_version(directory: Path, name: str, version: int) -> None:
    where = f"{name}@{version}"
    try:
        meta = metadata_io.validate(metadata_io.read(directory / METADATA_FILE))
    except FileNotFoundError:
        raise StoreError(f"{where}: the archive has no {METADATA_FILE} for it") from None
    if meta["name"] != name or meta["version"] != version:
        raise StoreError(f"{where}: its metadata says {meta['name']}@{meta['version']}")
    artifact = meta["artifact"]
    read_verified(directory, artifact["file"], artifact["sha256"], artifact["size"], where=where)


def _verify_aliases(model_dir: Path, name: str, versions: list[int]) -> dict[str, int]:
    """The archive's aliases of ``name``, each checked to point at a version it holds."""
    path = model_dir / ALIASES_FILE
    if not path.is_file():
        return {}
    try:
        state = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise StoreError(f"{name}: its {ALIASES_FILE} is not valid YAML") from None
    aliases = state.get("aliases") or {}
    for alias, version in aliases.items():
        if version not in versions:
            raise StoreError(f"{name}: alias {alias!r} points at version {version}, not in it")
    return aliases


def _verify_experiment(
    model_dir: Path, name: str, versions: list[int], aliases: dict[str, int]
) -> str | None:
    """The id of the archive's running experiment of ``name`` (None without one), after
    checking that every variant and the shadow name a version or alias the archive has."""
    path = model_dir / EXPERIMENT_FILE
    if not path.is_file():
        return None
    try:
        state = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise StoreError(f"{name}: its {EXPERIMENT_FILE} is not valid YAML") from None
    if not isinstance(state, dict):
        raise StoreError(f"{name}: its {EXPERIMENT_FILE} is not a mapping")
    if state.get("active") is None:
        return None
    try:
        experiment = Experiment.from_dict(name, state["active"])
    except (ServiceError, ValueError, TypeError) as exc:  # hand-edited or damaged
        raise StoreError(f"{name}: its {EXPERIMENT_FILE} is not an experiment: {exc}") from None
    for target in experiment.targets():
        if target.isdigit() and int(target) not in versions:
            raise StoreError(
                f"{name}: experiment {experiment.id} names version {target}, not in it; "
                f"refused: a restore never leaves an experiment on a version it lacks"
            )
        if not target.isdigit() and target not in aliases:
            raise StoreError(
                f"{name}: experiment {experiment.id} names alias {target!r}, not in it; "
                f"refused: a restore never leaves an experiment on an alias it lacks"
            )
    return experiment.id


# -- applying it ---------------------------------------------------------------------------


def _apply_model(store: ModelStore, name: str, source: Path) -> bool:
    """Make the store's model ``name`` what ``source`` holds: versions first, then aliases,
    then the experiment (whose alias variants resolve through those aliases), then the
    versions the archive lacks go. True when this stopped an experiment the store ran
    (the archive has no experiment.yaml for the model)."""
    target = store.layout.model_dir(name)
    target.mkdir(exist_ok=True)
    with store.locked_models([name]):
        wanted = {p.name for p in source.iterdir() if is_version_dir(p)}
        for version in sorted(wanted, key=int):
            _replace_dir(source / version, target / version)
        counter = source / COUNTER_FILE
        if counter.is_file():
            write_atomic(target / COUNTER_FILE, counter.read_text())
        aliases = source / ALIASES_FILE
        if aliases.is_file():
            write_atomic(target / ALIASES_FILE, aliases.read_text(encoding="utf-8"))
        else:
            (target / ALIASES_FILE).unlink(missing_ok=True)
        experiment = source / EXPERIMENT_FILE
        stopped = False
        if experiment.is_file():
            write_atomic(target / EXPERIMENT_FILE, experiment.read_text(encoding="utf-8"))
        elif (target / EXPERIMENT_FILE).is_file():
            stopped = _runs_experiment(target / EXPERIMENT_FILE)
            (target / EXPERIMENT_FILE).unlink()
        for stale in [p for p in target.iterdir() if is_version_dir(p) and p.name not in wanted]:
            remove_tree(stale)
    return stopped


def _runs_experiment(path: Path) -> bool:
    try:
        state = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return True  # unreadable: say so rather than hide it
    return isinstance(state, dict) and state.get("active") is not None


def _apply_keys(store: ModelStore, source: Path) -> str | None:
    """The archive's key file into a store that has none: "restored"; "kept" where the store
    has its own; None where the archive has none."""
    if not source.is_file():
        return None
    target = store.root / KEYS_FILE
    if target.exists():
        return "kept"
    write_atomic(target, source.read_text(encoding="utf-8"))
    return "restored"


def _replace_dir(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source``; unchanged when it already is one."""
    if target.is_dir() and _same_files(source, target):
        return
    staged = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    shutil.copytree(source, staged)
    put_version_in_place(staged, target)


def _same_files(a: Path, b: Path) -> bool:
    names_a = sorted(p.name for p in a.iterdir() if p.is_file())
    names_b = sorted(p.name for p in b.iterdir() if p.is_file())
    return names_a == names_b and all((a / n).read_bytes() == (b / n).read_bytes() for n in names_a)


def _add(tar: tarfile.TarFile, member: str, data: bytes) -> None:
    info = tarfile.TarInfo(member)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # the same store gives the same members
    tar.addfile(info, io.BytesIO(data))
