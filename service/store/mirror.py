"""A host's verified copy of the authoritative store: ``modelctl store-sync``.

Each host of a fleet serves from a store on its own disk, kept in step with
the authoritative one by this loop: every ``store_sync_interval`` seconds it
reads the authoritative manifest, fetches each version it lacks (or whose
metadata changed), verifies it there (sha256 before unpickling, then the
caller's check, e.g. the golden replay) in a scratch directory, and renames it
into place. Only then does it copy the model's aliases.yaml, byte for byte, so
an alias never points at a version this host has not verified, and then its
experiment.yaml, once every version and alias the experiment names is here. The workers
see the change as on one machine, through the aliases.yaml they watch.

When the authoritative store cannot be reached, or says it holds no model
(a wiped store is not a reason to stop serving), nothing local changes: the
host keeps serving its last verified versions and says so in the status file
that /readyz and /metrics read, and catches up at the first pass that works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from service.errors import ServiceError, StoreError
from service.files import TEMP_PREFIX, write_atomic
from service.store.experiments import EXPERIMENT_FILE, Experiment, InvalidExperiment
from service.store.layout import is_version_dir
from service.store.remote import RemoteStore
from service.store.signing import SIGNATURE_FILE
from service.store.store import (
    ModelStore,
    StoredArtifact,
    put_version_in_place,
    read_verified,
    remove_tree,
)

log = logging.getLogger(__name__)

STATUS_FILE = ".sync-status.json"

Verify = Callable[[StoredArtifact], Any]


def status_path(local_root: Path) -> Path:
    return Path(local_root) / STATUS_FILE


def read_status(local_root: Path) -> dict[str, Any] | None:
    """The mirror's last word, or None where no mirror runs (one machine)."""
    try:
        return json.loads(status_path(local_root).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, OSError):
        return None


class StoreMirror:
    def __init__(self, remote: RemoteStore, local: ModelStore, verify: Verify | None = None):
        self.remote = remote
        self.local = local
        self.verify = verify
        self.last_success: float | None = None
        # The first pass also checks the pickles this host already holds against their
        # metadata, so a copy damaged on this disk (while the agent was down) is fetched
        # again; later passes trust what they verified themselves.
        self.check_local_files = True

    def sync_once(self) -> dict[str, Any]:
        """One pass; returns what changed. Raises when the authoritative store cannot be
        read; per-model problems are reported in the summary and leave that model as it was."""
        manifest = self.remote.manifest()
        models = manifest["models"]
        if not models:
            raise StoreError(
                f"the authoritative store {self.remote} holds no model; "
                "keeping the versions verified before"
            )
        self.local.root.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {"fetched": [], "aliases": [], "removed": [], "problems": []}
        # A store host of an older release sends no key file: the keys here stay as they are.
        if "keys" in manifest:
            try:
                if self._take_keys(manifest["keys"]):
                    summary["keys"] = True
            except StoreError as exc:
                summary["problems"].append(f"keys: {exc.message}")
                log.error("the API keys are not in step: %s", exc.message)
        for name, entry in sorted(models.items()):
            try:
                self._sync_model(name, entry, summary)
            except ServiceError as exc:
                summary["problems"].append(f"{name}: {exc.message}")
                log.error("%s: not in step with the authoritative store: %s", name, exc.message)
        for name in self.local.names():
            if name not in models:
                self.local.remove_model(name)
                summary["removed"].append(name)
        self.last_success = time.time()
        self.check_local_files = False
        return summary

    def run(self, interval: float, stop: threading.Event) -> None:
        """Pass after pass until ``stop`` is set, writing the status after each."""
        while True:
            started = time.time()
            try:
                summary = self.sync_once()
            except ServiceError as exc:
                self._write_status(started, error=exc.message)
                log.warning("authoritative store not reached: %s", exc.message)
            else:
                self._write_status(started, problems=summary["problems"])
                changes = ("fetched", "aliases", "experiments", "removed", "keys")
                if any(summary.get(k) for k in changes):
                    log.info("in step with %s: %s", self.remote, json.dumps(summary))
            if stop.wait(max(0.0, interval - (time.time() - started))):
                return

    # -- one model ---------------------------------------------------------------------

    def _sync_model(self, name: str, entry: dict[str, Any], summary: dict[str, Any]) -> None:
        model_dir = self.local.layout.model_dir(name)
        model_dir.mkdir(exist_ok=True)
        verified: set[int] = set()
        with self.local.locked_models([name]):
            # A store host of an older release sends no "signatures": signatures not compared.
            signatures = entry.get("signatures")
            for text, digest in sorted(entry["versions"].items(), key=lambda kv: int(kv[0])):
                version = int(text)
                signed = None if signatures is None else signatures.get(text, "")
                if self._has(name, version, digest) and self._has_signature(name, version, signed):
                    verified.add(version)
                    continue
                try:
                    self._fetch(name, version)
                except ServiceError as exc:
                    summary["problems"].append(f"{name}@{version}: {exc.message}")
                    log.error("%s@%d: not taken: %s", name, version, exc.message)
                    continue
                verified.add(version)
                summary["fetched"].append(f"{name}@{version}")
            if self._take_aliases(name, entry["aliases"], verified):
                summary["aliases"].append(name)
            # A store host of an older release sends no "experiment": it stays as it is.
            if "experiment" in entry and self._take_experiment(name, entry["experiment"], verified):
                summary.setdefault("experiments", []).append(name)
            serving = set(self.local.aliases(name).values()) if entry["aliases"] else set()
            serving |= self._experiment_versions(name)
            wanted = {int(v) for v in entry["versions"]}
            for path in [p for p in model_dir.iterdir() if is_version_dir(p)]:
                if int(path.name) not in wanted and int(path.name) not in serving:
                    remove_tree(path)

    def _has(self, name: str, version: int, metadata_digest: str) -> bool:
        path = self.local.layout.metadata_file(name, version)
        try:
            same = hashlib.sha256(path.read_bytes()).hexdigest() == metadata_digest
        except (FileNotFoundError, NotADirectoryError):
            return False
        if same and self.check_local_files:
            artifact = yaml.safe_load(path.read_text(encoding="utf-8"))["artifact"]
            try:
                read_verified(
                    path.parent, artifact["file"], artifact["sha256"], artifact["size"],
                    where=f"{name}@{version}",
                )  # fmt: skip
            except ServiceError as exc:
                log.warning("%s; fetching it again", exc.message)
                return False
        return same

    def _has_signature(self, name: str, version: int, digest: str | None) -> bool:
        """This host's model.sig of a version is the authoritative one ("" for none): a
        version signed (or signed again) after it was fetched is fetched again."""
        if digest is None:
            return True
        path = self.local.layout.version_dir(name, version) / SIGNATURE_FILE
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest() == digest
        except (FileNotFoundError, NotADirectoryError):
            return digest == ""

    def _fetch(self, name: str, version: int) -> None:
        """Fetch into a scratch directory, verify there, then rename into place."""
        model_dir = self.local.layout.model_dir(name)
        staged = model_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        staged.mkdir()
        try:
            self.remote.export_version(name, version, staged)
            artifact = self.local.load_from_directory(staged, name=name, version=version)
            if self.verify is not None:
                self.verify(artifact)
            put_version_in_place(staged, self.local.layout.version_dir(name, version))
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        log.info("%s@%d: fetched and verified", name, version)

    def _take_aliases(self, name: str, text: str | None, verified: set[int]) -> bool:
        """Copy the authoritative aliases.yaml once every version it names is verified here."""
        path = self.local.layout.aliases_file(name)
        if not _replaces(text, path):
            return False
        try:
            state = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            raise StoreError("its aliases.yaml on the authoritative store is not YAML") from None
        targets = {int(v) for v in (state.get("aliases") or {}).values()}
        if not targets <= verified:
            missing = ", ".join(str(v) for v in sorted(targets - verified))
            raise StoreError(
                f"its aliases name version(s) {missing}, not verified here; "
                "serving the aliases as they were"
            )
        write_atomic(path, text)
        return True

    def _take_experiment(self, name: str, text: str | None, verified: set[int]) -> bool:
        """Copy the authoritative experiment.yaml once every version it names is verified
        here and every alias it names is one this host has (it resolves them through its
        own aliases, which only ever name verified versions). None: the authoritative
        store has no experiment file, so neither does this host."""
        path = self.local.layout.model_dir(name) / EXPERIMENT_FILE
        if text is None:
            if not path.exists():
                return False
            path.unlink()
            return True
        if not _replaces(text, path):
            return False
        try:
            state = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            raise StoreError("its experiment.yaml on the authoritative store is not YAML") from None
        active = state.get("active") if isinstance(state, dict) else None
        if not isinstance(state, dict) or not isinstance(state.get("history", []), list):
            raise StoreError("its experiment.yaml on the authoritative store is not valid")
        if active is not None:
            try:
                experiment = Experiment.from_dict(name, active)
            except InvalidExperiment as exc:
                raise StoreError(
                    f"its experiment on the authoritative store is not valid ({exc.message}); "
                    "keeping this host's"
                ) from None
            aliases = self.local.aliases(name)
            missing = [
                target
                for target in experiment.targets()
                if (int(target) not in verified if target.isdigit() else target not in aliases)
            ]
            if missing:
                raise StoreError(
                    f"its experiment names {', '.join(missing)}, not verified here; "
                    "keeping this host's experiment as it was"
                )
        write_atomic(path, text)
        return True

    def _experiment_versions(self, name: str) -> set[int]:
        """The version numbers this host's experiment names: kept while it runs."""
        try:
            experiment = self.local.experiment(name)
        except ServiceError:
            return set()
        if experiment is None:
            return set()
        return {int(t) for t in experiment.targets() if t.isdigit()}

    def _take_keys(self, text: str | None) -> bool:
        """Copy the authoritative key file byte for byte, once it parses: a revoked key stops
        working here within a pass and the workers' reload. A revocation rewrites the file,
        so an authoritative store without one was wiped: this host keeps the keys it has,
        as it keeps its models."""
        from service.keys import KEYS_FILE, parse_keys

        path = self.local.root / KEYS_FILE
        if not _replaces(text, path):
            return False
        try:
            parse_keys(text)
        except ValueError as exc:
            raise StoreError(
                f"the authoritative key file is not valid ({exc}); keeping this host's"
            ) from None
        write_atomic(path, text)
        return True

    # -- what the host says ---------------------------------------------------------------

    def _write_status(
        self, attempt: float, *, error: str | None = None, problems: list[str] | None = None
    ) -> None:
        status = {
            "remote": str(self.remote),
            "reachable": error is None,
            "error": error,
            "problems": problems or [],
            "last_attempt": attempt,
            "last_success": self.last_success,
        }
        try:
            write_atomic(status_path(self.local.root), json.dumps(status) + "\n")
        except OSError as exc:
            log.error("cannot write the sync status: %s", exc)


def _replaces(text: str | None, path: Path) -> bool:
    """Whether the authoritative copy of a file (None: that store has none) differs from
    the local one: a missing authoritative file never removes the local one."""
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    return text is not None and text != current


def describe(status: dict[str, Any] | None, interval: float, now: float) -> dict[str, Any]:
    """The mirror's status as /readyz and /metrics show it: reachable, the age of the last
    good pass, and whether the agent itself still runs (its status is fresh)."""
    if status is None:
        return {"reachable": False, "error": "no store-sync has run on this host yet"}
    last_success = status.get("last_success")
    view = {
        "remote": status.get("remote"),
        "reachable": bool(status.get("reachable")),
        "seconds_since_sync": None if last_success is None else round(now - last_success, 3),
    }
    if status.get("error"):
        view["error"] = status["error"]
    if status.get("problems"):
        view["problems"] = status["problems"]
    # Ten missed passes: the agent is not running, whatever its last word was.
    if now - float(status.get("last_attempt") or 0) > max(10 * interval, 10.0):
        view["reachable"] = False
        view["error"] = "store-sync has not run for a while on this host"
    return view
