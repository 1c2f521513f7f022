"""ModelStore: list, resolve, load (sha256-verified), publish (atomic), promote, roll back.

Writers take a per-model file lock; readers take none, because every change
becomes visible through one rename: a new version directory appears whole,
and aliases.yaml is replaced, never edited in place. A published version's
model.pkl never changes; ``amend`` may add files next to it (a compiled form
of the model) and then replace its metadata.yaml, again through renames.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import logging
import os
import pickle
import platform
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from service.errors import (
    AliasNotFound,
    Conflict,
    IntegrityError,
    ModelLoadError,
    ModelNotFound,
    PromotionRefused,
    StoreError,
    VersionNotFound,
)
from service.files import TEMP_PREFIX, write_atomic
from service.store import experiments, signing
from service.store import metadata as metadata_io
from service.store.layout import (
    COUNTER_FILE,
    LOCK_FILE,
    METADATA_FILE,
    ModelRef,
    StoreLayout,
    check_alias,
    check_name,
    check_version,
    is_version_dir,
    resolve_ref,
)
from service.store.promotion import GateRefusal, check_promotion

log = logging.getLogger(__name__)

ARTIFACT_FILE = "model.pkl"
ALIAS_HISTORY_LIMIT = 200
# Files of a version: plain names, as metadata.yaml's artifact.file.
FILE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclasses.dataclass
class StoredArtifact:
    """An unpickled estimator, the metadata it came with, and what is odd about it."""

    metadata: dict[str, Any]
    estimator: Any
    warnings: list[str]
    # The version's directory: other files the metadata lists are read from it, checked.
    directory: Path | None = None

    def read_file(self, file_name: str, sha256: str, size: int) -> bytes:
        """Another file of this version, only if its sha256 and size are the recorded ones
        (IntegrityError otherwise, ModelLoadError when it cannot be read)."""
        if self.directory is None:
            raise ModelLoadError(f"{file_name}: this artifact was not read from a store")
        where = f"{self.metadata['name']}@{self.metadata['version']}"
        return read_verified(self.directory, file_name, sha256, size, where=where)


def environment() -> dict[str, str]:
    # Imported here, not at the top: the store host answers most requests (a manifest, an
    # alias change) without scikit-learn, and its every request is a new process.
    import numpy
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
    }


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ModelStore:
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        trusted_keys: Sequence[str | os.PathLike[str]] = (),
        signing_key: str | os.PathLike[str] | None = None,
    ):
        self.layout = StoreLayout(Path(root))
        self.root = self.layout.root
        # Public keys a version's signature must verify against before it is unpickled
        # (none: the sha256 alone is checked), and the private key this store's publishes
        # and amendments are signed with (none: unsigned). See service.store.signing.
        self.trusted_keys = signing.check_trusted_keys(trusted_keys)
        self.signing_key = signing.check_private_key(signing_key) if signing_key else None

    @classmethod
    def from_settings(
        cls, settings: Any, root: str | os.PathLike[str] | None = None, *, sign: bool = False
    ) -> ModelStore:
        """The store at ``root`` (default: the ``store`` setting), trusting the keys the
        settings name; what it publishes is signed with their ``signing_key`` if ``sign``."""
        return cls(
            settings.store if root is None else root,
            trusted_keys=settings.trusted_signing_keys,
            signing_key=(settings.signing_key or None) if sign else None,
        )

    # -- reading ---------------------------------------------------------------

    def exists(self) -> bool:
        return self.root.is_dir()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            raise StoreError(f"the model store {self.root} does not exist")
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and _is_name(entry.name)
        )

    def has_model(self, name: str) -> bool:
        return self.layout.model_dir(name).is_dir()

    def versions(self, name: str) -> list[int]:
        model_dir = self._existing_model_dir(name)
        return sorted(int(p.name) for p in model_dir.iterdir() if is_version_dir(p))

    def alias_state(self, name: str) -> dict[str, Any]:
        """aliases.yaml as a mapping: aliases, the stack of previous targets, history."""
        path = self.layout.aliases_file(name)
        try:
            with open(path, encoding="utf-8") as handle:
                state = yaml.safe_load(handle) or {}
        except FileNotFoundError:
            self._existing_model_dir(name)
            state = {}
        except yaml.YAMLError as exc:
            raise StoreError(f"{path}: not valid YAML: {exc}") from None
        state.setdefault("aliases", {})
        state.setdefault("previous", {})
        state.setdefault("history", [])
        return state

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self.alias_state(name)["aliases"])

    def aliases_signature(self, name: str) -> tuple[int, int, int] | None:
        """Changes whenever aliases.yaml is replaced: cheap enough to poll."""
        try:
            st = os.stat(self.layout.aliases_file(name))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    # -- experiments (service.store.experiments keeps the file; these name its operations
    # the same way on this store and on a fleet's remote one) ------------------------------

    def experiment_state(self, name: str) -> dict[str, Any]:
        """experiment.yaml as a mapping: ``active`` (or None) and ``history``."""
        return experiments.read_state(self, name)

    def experiment(self, name: str) -> experiments.Experiment | None:
        return experiments.active(self, name)

    def experiment_signature(self, name: str) -> tuple[int, int, int] | None:
        return experiments.signature(self, name)

    def start_experiment(self, name: str, variants, **options: Any) -> experiments.Experiment:
        return experiments.start(self, name, list(variants), **options)

    def set_experiment_weights(
        self, name: str, weights: Mapping[str, float], **options: Any
    ) -> experiments.Experiment:
        return experiments.set_weights(self, name, dict(weights), **options)

    def stop_experiment(self, name: str, **options: Any) -> experiments.Experiment:
        return experiments.stop(self, name, **options)

    def note_experiment(self, name: str, action: str, **options: Any) -> None:
        experiments.note(self, name, action, **options)

    def resolve(self, ref: ModelRef, default_alias: str = "production") -> int:
        """The version number a reference points at."""
        return resolve_ref(self, ref, default_alias)

    def metadata(self, name: str, version: int) -> dict[str, Any]:
        path = self.layout.metadata_file(name, version)
        if not path.is_file():
            self._existing_model_dir(name)
            raise VersionNotFound(f"model {name!r} has no version {version}")
        return metadata_io.read(path)

    def load_artifact(
        self, name: str, version: int, *, refuse_version_mismatch: bool = False
    ) -> StoredArtifact:
        """Read, verify and unpickle one version. The sha256 is checked before unpickling."""
        self._existing_model_dir(name)
        return self._load_from_dir(
            self.layout.version_dir(name, version),
            name=name,
            version=version,
            refuse_version_mismatch=refuse_version_mismatch,
        )

    def load_from_directory(
        self, directory: Path, *, name: str, version: int, refuse_version_mismatch: bool = False
    ) -> StoredArtifact:
        """Verify and unpickle a version that is not in place yet (a scratch directory)."""
        return self._load_from_dir(
            directory, name=name, version=version, refuse_version_mismatch=refuse_version_mismatch
        )

    def _load_from_dir(
        self, directory: Path, *, name: str, version: int, refuse_version_mismatch: bool
    ) -> StoredArtifact:
        where = f"{name}@{version}"
        meta_path = directory / METADATA_FILE
        if not meta_path.is_file():
            raise VersionNotFound(f"model {name!r} has no version {version}")
        # With trusted keys, what follows reads the verified bytes, not the disk again.
        verified = signing.verify_version(directory, self.trusted_keys, name=name, version=version)
        if verified is None:
            meta = metadata_io.validate(metadata_io.read(meta_path))
        else:
            meta = metadata_io.validate(metadata_io.parse(verified.files[METADATA_FILE], meta_path))
        if meta["name"] != name or meta["version"] != version:
            raise IntegrityError(
                f"{where}: metadata says {meta['name']}@{meta['version']}; refusing to load"
            )
        artifact = meta["artifact"]
        self.layout._inside(directory / artifact["file"])
        data = read_verified(
            directory,
            artifact["file"],
            artifact["sha256"],
            artifact["size"],
            where=where,
            refusal="refusing to unpickle it",
            what="artifact",
            data=None if verified is None else verified.files.get(artifact["file"], b""),
        )
        path = directory / artifact["file"]
        from sklearn.exceptions import InconsistentVersionWarning

        problems = self._version_problems(meta)
        if problems and refuse_version_mismatch:
            raise ModelLoadError(f"{where}: " + "; ".join(problems), code="version_mismatch")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InconsistentVersionWarning)
            try:
                estimator = pickle.loads(data)
            except Exception as exc:
                raise ModelLoadError(f"{where}: cannot unpickle {path.name}: {exc}") from exc
        for warning in caught:
            if issubclass(warning.category, InconsistentVersionWarning):
                message = str(warning.message).splitlines()[0]
                if refuse_version_mismatch:
                    raise ModelLoadError(f"{where}: {message}", code="version_mismatch")
                if message not in problems:
                    problems.append(message)
        for problem in problems:
            log.warning("%s: %s", where, problem)
        return StoredArtifact(
            metadata=meta, estimator=estimator, warnings=problems, directory=directory.resolve()
        )

    @staticmethod
    def _version_problems(meta: dict[str, Any]) -> list[str]:
        import sklearn

        recorded = meta["environment"].get("scikit-learn")
        if recorded and recorded != sklearn.__version__:
            return [
                f"pickled with scikit-learn {recorded}, running {sklearn.__version__}: "
                "predictions may differ (retrain, or pin the recorded version)"
            ]
        return []

    # -- writing ---------------------------------------------------------------

    def publish(
        self,
        name: str,
        artifact_bytes: bytes,
        metadata: dict[str, Any],
        *,
        aliases: tuple[str, ...] = (),
        verify: Callable[[StoredArtifact], None] | None = None,
        extra_files: Mapping[str, bytes] | None = None,
    ) -> int:
        """Add a new version atomically and return its number.

        The version is written under a temporary name, loaded back and verified
        (``verify`` gets the loaded artifact), and only then renamed into place;
        any failure removes the temporary directory and leaves the store as it was.
        ``extra_files`` ({plain file name: bytes}) are written in the same directory,
        so they appear with the version; the metadata says what they are.
        """
        check_name(name)
        for alias in aliases:
            check_alias(alias)
        extra = _checked_files(extra_files)
        metadata_io.validate(metadata, partial=True)
        self.root.mkdir(parents=True, exist_ok=True)
        model_dir = self.layout.model_dir(name)
        new_model = not model_dir.exists()
        model_dir.mkdir(exist_ok=True)
        try:
            return self._publish_locked(name, artifact_bytes, metadata, aliases, verify, extra)
        except BaseException:
            if new_model:
                self._remove_if_empty(model_dir)
            raise

    def _publish_locked(
        self,
        name: str,
        artifact_bytes: bytes,
        metadata: dict[str, Any],
        aliases: tuple[str, ...],
        verify: Callable[[StoredArtifact], None] | None,
        extra_files: dict[str, bytes],
    ) -> int:
        model_dir = self.layout.model_dir(name)
        with self._locked(name):
            version = self._next_version(name)
            # Identity first, so a person reading the file sees what it is at once.
            meta = {
                "schema_version": metadata.get("schema_version", metadata_io.SCHEMA_VERSION),
                "name": name,
                "version": version,
                "created_at": metadata.get("created_at") or now_iso(),
                **{k: v for k, v in metadata.items() if k not in {"name", "version", "created_at"}},
            }
            meta["environment"] = meta.get("environment") or environment()
            meta["artifact"] = {
                "file": ARTIFACT_FILE,
                "format": "pickle",
                "sha256": sha256_of(artifact_bytes),
                "size": len(artifact_bytes),
            }
            metadata_io.validate(meta)
            temp_dir = model_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
            try:
                temp_dir.mkdir()
                _write_synced(temp_dir / ARTIFACT_FILE, artifact_bytes)
                for file_name, data in extra_files.items():
                    _write_synced(temp_dir / file_name, data)
                _write_synced(temp_dir / METADATA_FILE, metadata_io.dump(meta).encode())
                if self.signing_key is not None:
                    signing.sign_version(temp_dir, self.signing_key)
                loaded = self._load_from_dir(
                    temp_dir, name=name, version=version, refuse_version_mismatch=True
                )
                if verify is not None:
                    verify(loaded)
                self._write_counter(name, version)
                os.rename(temp_dir, self.layout.version_dir(name, version))
                _fsync_dir(model_dir)
            except BaseException as exc:
                shutil.rmtree(temp_dir, ignore_errors=True)
                if isinstance(exc, OSError):  # a full disk, a read-only store
                    raise StoreError(
                        f"cannot publish {name}@{version}: {exc.strerror or exc}; "
                        "the store is as it was"
                    ) from exc
                raise
            for alias in aliases:
                self._set_alias_locked(name, alias, version, action="publish", reason="published")
        log.info("published %s@%d", name, version)
        return version

    def amend(
        self,
        name: str,
        version: int,
        files: Mapping[str, bytes],
        update: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        """Add files to a published version, then replace its metadata with
        ``update(metadata)``; return the new metadata.

        Under the model's lock: each file is written to a temporary name and renamed into
        place, then metadata.yaml is replaced the same way, so a reader sees the old
        metadata or the new one, and the new one only once the files it lists are there.
        What identifies the version (name, version, created_at, the pickle) cannot change.
        """
        version = check_version(version)
        checked = _checked_files(files)
        with self._locked(name):
            directory = self.layout.version_dir(name, version)
            meta_path = directory / METADATA_FILE
            if not meta_path.is_file():
                raise VersionNotFound(f"model {name!r} has no version {version}")
            current = metadata_io.validate(metadata_io.read(meta_path))
            new = metadata_io.validate(update(copy.deepcopy(current)))
            for key in ("name", "version", "created_at", "artifact"):
                if new.get(key) != current.get(key):
                    raise IntegrityError(f"{name}@{version}: an amendment cannot change {key!r}")
            signed = (directory / signing.SIGNATURE_FILE).is_file()
            if signed and self.signing_key is None:
                raise StoreError(
                    f"{name}@{version} is signed: amending it needs the signing key "
                    "(setting signing_key), else its signature would no longer verify"
                )
            for file_name, data in checked.items():
                write_atomic(directory / file_name, data)
            write_atomic(meta_path, metadata_io.dump(new))
            if self.signing_key is not None:
                signing.sign_version(directory, self.signing_key)
            _fsync_dir(directory)
        log.info("amended %s@%d: %s", name, version, ", ".join(checked) or "metadata")
        return new

    def metadata_signature(self, name: str, version: int) -> tuple[int, ...] | None:
        """Changes whenever a version's metadata.yaml is replaced (by ``amend``), or its
        signature is (``modelctl sign``): a version refused before may verify now."""
        try:
            st = os.stat(self.layout.metadata_file(name, version))
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            sig = os.stat(self.layout.version_dir(name, version) / signing.SIGNATURE_FILE)
            signed: tuple[int, ...] = (sig.st_ino, sig.st_mtime_ns, sig.st_size)
        except FileNotFoundError:
            signed = ()
        return (st.st_ino, st.st_mtime_ns, st.st_size, *signed)

    def sign(self, name: str, version: int) -> Path:
        """Sign a published version (one published unsigned, or signed by another key)
        with this store's signing key, under the model's lock."""
        if self.signing_key is None:
            raise StoreError("signing needs a signing key (setting signing_key)")
        version = check_version(version)
        with self._locked(name):
            directory = self.layout.version_dir(name, version)
            if not (directory / METADATA_FILE).is_file():
                raise VersionNotFound(f"model {name!r} has no version {version}")
            # A pickle that no longer matches its sha256 is damaged: not signed as good.
            artifact = metadata_io.read(directory / METADATA_FILE)["artifact"]
            read_verified(
                directory,
                artifact["file"],
                artifact["sha256"],
                artifact["size"],
                where=f"{name}@{version}",
                refusal="not signing it",
            )
            path = signing.sign_version(directory, self.signing_key)
        log.info("signed %s@%d", name, version)
        return path

    def put_signature(self, name: str, version: int, data: bytes) -> None:
        """Place a signature made elsewhere (a publisher signing what it published to this
        store over SSH); whoever loads the version verifies it."""
        version = check_version(version)
        with self._locked(name):
            directory = self.layout.version_dir(name, version)
            if not (directory / METADATA_FILE).is_file():
                raise VersionNotFound(f"model {name!r} has no version {version}")
            signing.write_signature(directory, data)
        log.info("signature placed on %s@%d", name, version)

    def promote(
        self,
        name: str,
        version: int,
        alias: str = "production",
        reason: str = "",
        *,
        force: bool = False,
    ) -> int | None:
        """Point ``alias`` at ``version``; return the version it pointed at before.

        The promotion gate refuses a version that scores worse on its test set, by its
        primary metric, than the version the alias points at now, or that cannot be
        compared with it (PromotionRefused). ``force`` promotes anyway, and the history
        records that the gate was overridden and what it said.
        """
        check_alias(alias)
        version = check_version(version)
        with self._locked(name):
            if version not in self.versions(name):
                raise VersionNotFound(f"model {name!r} has no version {version}")
            refusal = self._promotion_gate(name, version, alias)
            forced = None
            if refusal is not None:
                if not force:
                    raise PromotionRefused(refusal.reason, refusal.details)
                forced = {"forced": True, "gate": refusal.reason}
                log.info("%s: promotion forced past the gate: %s", name, refusal.reason)
            return self._set_alias_locked(
                name, alias, version, action="promote", reason=reason, extra=forced
            )

    def check_promotion(
        self, name: str, version: int, alias: str = "production"
    ) -> GateRefusal | None:
        """What the promotion gate says now about pointing ``alias`` at ``version``:
        None when it would allow it. Changes nothing."""
        check_alias(alias)
        version = check_version(version)
        if version not in self.versions(name):
            raise VersionNotFound(f"model {name!r} has no version {version}")
        return self._promotion_gate(name, version, alias)

    def rollback(self, name: str, alias: str = "production", reason: str = "") -> tuple[int, int]:
        """Return ``alias`` to the version it had before its last promote: (from, to)."""
        check_alias(alias)
        with self._locked(name):
            state = self.alias_state(name)
            current = state["aliases"].get(alias)
            stack = list(state["previous"].get(alias) or [])
            if current is None:
                raise AliasNotFound(f"model {name!r} has no alias {alias!r}")
            if not stack:
                raise Conflict(
                    f"model {name!r}: alias {alias!r} has no earlier version to roll back to"
                )
            target = int(stack.pop())
            state["aliases"][alias] = target
            state["previous"][alias] = stack
            self._append_history(state, alias, current, target, "rollback", reason)
            self._write_alias_state(name, state)
        log.info("rolled back %s %s: %s -> %s", name, alias, current, target)
        return int(current), target

    def remove_alias(self, name: str, alias: str) -> None:
        with self._locked(name):
            state = self.alias_state(name)
            if alias not in state["aliases"]:
                raise AliasNotFound(f"model {name!r} has no alias {alias!r}")
            previous = state["aliases"].pop(alias)
            self._append_history(state, alias, previous, None, "remove", "")
            self._write_alias_state(name, state)

    # -- internals -------------------------------------------------------------

    def _promotion_gate(self, name: str, version: int, alias: str) -> GateRefusal | None:
        current = self.alias_state(name)["aliases"].get(alias)
        if current is None or int(current) == version:
            return None
        try:
            current_meta = self.metadata(name, int(current))
        except VersionNotFound:
            current_meta = {"name": name, "version": int(current)}
        return check_promotion(self.metadata(name, version), current_meta, alias)

    def _set_alias_locked(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        action: str,
        reason: str,
        extra: dict[str, Any] | None = None,
    ) -> int | None:
        state = self.alias_state(name)
        previous = state["aliases"].get(alias)
        if previous == version:
            return previous
        if previous is not None:
            state["previous"].setdefault(alias, []).append(int(previous))
        state["aliases"][alias] = int(version)
        self._append_history(state, alias, previous, version, action, reason, extra)
        self._write_alias_state(name, state)
        log.info("%s: alias %s -> %d (was %s)", name, alias, version, previous)
        return previous

    @staticmethod
    def _append_history(
        state: dict[str, Any],
        alias: str,
        before: int | None,
        after: int | None,
        action: str,
        reason: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        entry = {"at": now_iso(), "alias": alias, "from": before, "to": after, "action": action}
        if reason:
            entry["reason"] = reason
        entry.update(extra or {})
        state["history"] = [*state["history"], entry][-ALIAS_HISTORY_LIMIT:]

    def _write_alias_state(self, name: str, state: dict[str, Any]) -> None:
        text = yaml.safe_dump(
            {
                "aliases": state["aliases"],
                "previous": state["previous"],
                "history": state["history"],
            },
            sort_keys=False,
        )
        write_atomic(self.layout.aliases_file(name), text)

    def _next_version(self, name: str) -> int:
        existing = [int(p.name) for p in self.layout.model_dir(name).iterdir() if is_version_dir(p)]
        counter_path = self.layout.model_dir(name) / COUNTER_FILE
        try:
            counted = int(counter_path.read_text().strip() or 0)
        except FileNotFoundError:
            counted = 0
        except ValueError:
            raise StoreError(f"{counter_path}: not a version number") from None
        return max([counted, *existing]) + 1

    def _write_counter(self, name: str, version: int) -> None:
        write_atomic(self.layout.model_dir(name) / COUNTER_FILE, f"{version}\n")

    def _remove_if_empty(self, model_dir: Path) -> None:
        """Undo the directory a failed first publish created (unless another writer used it)."""
        with self._locked(model_dir.name):
            leftovers = [p for p in model_dir.iterdir() if p.name != LOCK_FILE]
            if not leftovers:
                shutil.rmtree(model_dir, ignore_errors=True)

    def _existing_model_dir(self, name: str) -> Path:
        model_dir = self.layout.model_dir(name)
        if not model_dir.is_dir():
            raise ModelNotFound(f"no model named {name!r} in the store", details={"model": name})
        return model_dir

    @contextlib.contextmanager
    def locked_models(self, names: list[str]) -> Iterator[None]:
        """Hold the writers' lock of every named model (in name order, so two callers
        cannot deadlock): no publish, promote or rollback of them happens meanwhile."""
        with contextlib.ExitStack() as stack:
            for name in sorted(names):
                stack.enter_context(self._locked(name))
            yield

    def remove_model(self, name: str) -> None:
        """Take a whole model out of the store: renamed away under its lock, then deleted."""
        with self._locked(name):
            remove_tree(self.layout.model_dir(name))
        log.info("removed model %s", name)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        model_dir = self._existing_model_dir(name)
        with open(model_dir / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _is_name(text: str) -> bool:
    try:
        check_name(text)
    except Exception:
        return False
    return True


RESERVED_FILES = frozenset({ARTIFACT_FILE, METADATA_FILE, signing.SIGNATURE_FILE})


def _checked_files(files: Mapping[str, bytes] | None) -> dict[str, bytes]:
    checked = {}
    for file_name, data in (files or {}).items():
        if (
            not isinstance(file_name, str)
            or not FILE_NAME_PATTERN.fullmatch(file_name)
            or file_name in RESERVED_FILES
        ):
            raise StoreError(f"{file_name!r} cannot be added to a version: not a plain file name")
        checked[file_name] = bytes(data)
    return checked


def read_verified(
    directory: Path,
    file_name: str,
    sha256: str,
    size: int,
    *,
    where: str,
    refusal: str = "refusing to use it",
    what: str = "file",
    data: bytes | None = None,
) -> bytes:
    """A file of a version directory whose sha256 and size are the expected ones (``data``:
    its contents as read already, e.g. by the signature check)."""
    directory = directory.resolve()
    path = (directory / file_name).resolve()
    if path.parent != directory:
        raise IntegrityError(f"{where}: {what} {file_name!r} is outside its version")
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{where}: cannot read {path.name}: {exc.strerror}") from None
    digest = sha256_of(data)
    if digest != sha256 or len(data) != size:
        raise IntegrityError(
            f"{where}: {path.name} has sha256 {digest} ({len(data)} bytes) but the metadata "
            f"records {sha256} ({size} bytes); {refusal}"
        )
    return data


def put_version_in_place(staged: Path, target: Path) -> None:
    """A version directory prepared under a temporary name becomes ``target`` (replacing an
    older copy there) by renames, readable by every worker user."""
    for path in staged.iterdir():
        os.chmod(path, 0o644)
    os.chmod(staged, 0o755)
    if target.exists():
        remove_tree(target)
    os.rename(staged, target)


def remove_tree(path: Path) -> None:
    """Renamed away first, so a version (or a model) disappears at once and whole."""
    doomed = path.with_name(f"{TEMP_PREFIX}gone-{uuid.uuid4().hex}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
