"""The in-process cache of loaded models, kept in step with the store.

Each process holds the versions its aliases point at. A watcher thread polls
the store (a stat of each model's aliases.yaml and of its served versions'
metadata.yaml per interval) and, when an alias moves, loads the new version
*before* switching the alias, so requests never wait for a load and never see
a half-loaded model. A served version whose metadata.yaml was replaced
(``modelctl optimize`` adds an ONNX form) is loaded again the same way and the
new LoadedModel takes the old one's place. Requests for an explicit version that
is not loaded yet load it on demand, which blocks only that request, and for at most
REQUEST_LOAD_WAIT_SECONDS: a longer load goes on in the background and the request gets
a 503 that says so.

An experiment (``experiment.yaml``, see service.store.experiments) is watched in the
same look: every version it serves is loaded *before* the experiment applies, and stays
loaded while it runs (a shadow's candidate is not: the shadow process loads it, see
service.runtime.shadow). :meth:`route` then sends each request that names no
version and no alias to the variant the experiment assigns it. An experiment that
cannot apply (an invalid file, a variant that does not load) is not half-applied: the
model's default alias serves everything, and the log says why.

Under Gunicorn with ``preload_app`` the master calls :meth:`refresh` once so
workers inherit the models copy-on-write; the watcher thread is started lazily
in each worker (threads do not survive ``fork``). A request never loads longer than
REQUEST_LOAD_WAIT_SECONDS: Gunicorn kills a worker that holds one request past its
timeout, and a worker that loaded a slow model in its first request would be killed,
and its successor too, forever.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from service.config import Settings
from service.errors import (
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ServiceError,
    SignatureRefused,
    StoreError,
)
from service.runtime import hooks
from service.runtime import model as model_runtime
from service.runtime.model import LoadedModel
from service.store import ModelRef, ModelStore
from service.store.experiments import FIELD_PATTERN, Experiment

log = logging.getLogger(__name__)

# A version that no alias points at is dropped when unused for this long.
IDLE_VERSION_SECONDS = 600.0
# A version that failed to load is tried again after this long (or on reload).
RETRY_FAILED_SECONDS = 30.0
# The longest a request waits for a model to load (a new worker's catch-up with the store,
# a version asked for by number): well under Gunicorn's worker timeout (60 s).
REQUEST_LOAD_WAIT_SECONDS = 5.0

# Told of every model this registry loads, with the seconds the load took (monitoring).
LoadListener = Callable[[LoadedModel, float], None]
# (name, version, reason): a version refused before unpickling (SignatureRefused.reason).
RefusalListener = Callable[[str, int, str], None]
# A request's client key for sticky assignment, or how to find it once the experiment
# (which names the header or body field that carries it) is known.
ClientKey = str | Callable[[Experiment], str | None] | None
NO_FIELDS: frozenset[str] = frozenset()

# This process's id, kept up to date across fork: os.getpid() is a system call (about a
# microsecond on a virtual machine), and every request asks whether its process has a
# watcher yet.
_pid = os.getpid()


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_fork)


class ModelRegistry:
    def __init__(self, store: ModelStore, settings: Settings):
        self.store = store
        self.settings = settings
        self._models: dict[tuple[str, int], LoadedModel] = {}
        self._last_used: dict[tuple[str, int], float] = {}
        # name -> {alias: version}; only ever points at versions in self._models.
        self._aliases: dict[str, dict[str, int]] = {}
        self._signatures: dict[str, Any] = {}
        # name -> {alias: version} as the store had it at the last look.
        self._wanted: dict[str, dict[str, int]] = {}
        self._failures: dict[tuple[str, int], tuple[str, float]] = {}
        # The stat of each loaded version's metadata.yaml when it was loaded.
        self._meta_signatures: dict[tuple[str, int], Any] = {}
        self._load_lock = threading.Lock()
        # (name, version) -> when its load started, while it runs (readiness says so).
        self._loading: dict[tuple[str, int], float] = {}
        # Loads requests asked for, running in threads of their own.
        self._pending: dict[tuple[str, int], concurrent.futures.Future[LoadedModel]] = {}
        self._pending_lock = threading.Lock()
        self._catch_up_until = 0.0
        self._caught_up = threading.Event()
        self._refresh_lock = threading.Lock()
        self._watcher_pid: int | None = None
        self._stop = threading.Event()
        # name -> the experiment this process applies: every version it serves is loaded
        # (see _sync_experiment). Most models have none: route's one lookup.
        self._experiments: dict[str, Experiment] = {}
        # name -> why the store's experiment does not apply here, and since when.
        self._experiment_problems: dict[str, tuple[str, float]] = {}
        # name -> the body fields its experiments (running or past) carry client keys in.
        self._key_fields: dict[str, frozenset[str]] = {}
        self.last_refresh: float | None = None
        self.load_listeners: list[LoadListener] = []
        self.refusal_listeners: list[RefusalListener] = []
        # Told of every prediction this registry's models serve (this app's monitoring).
        self.observers = hooks.Observers()

    # -- serving ---------------------------------------------------------------

    def get(self, ref: ModelRef) -> LoadedModel:
        """The loaded model a reference points at. Raises 404-type errors for unknown refs."""
        self._ensure_watcher()
        return self._serve(ref)

    def _serve(self, ref: ModelRef) -> LoadedModel:
        """get() once this process's watcher runs."""
        name = ref.name
        if not self._is_served(name):
            raise ModelNotFound(f"no model named {name!r} is served", details={"model": name})
        if ref.version is None:
            alias = ref.alias or self.settings.default_alias
            version = self._aliases.get(name, {}).get(alias)
            if version is None:
                # An alias this process has not seen yet (or one that failed to load):
                # the store is the truth.
                version = self.store.resolve(ref, self.settings.default_alias)
        else:
            version = ref.version
        key = (name, version)
        loaded = self._models.get(key)
        if loaded is None:
            if self._recently_failed(key):
                raise ModelNotReady(
                    f"{name}@{version} cannot be served: {self._failures[key][0]}",
                    details={"model": name, "version": version},
                )
            version = self.store.resolve(ModelRef(name, version=version))
            try:
                loaded = self._load_soon(name, version).result(REQUEST_LOAD_WAIT_SECONDS)
            except concurrent.futures.TimeoutError:
                raise ModelNotReady(
                    f"{name}@{version} is loading ({self._loading_seconds(key):.0f} s so far); "
                    "try again shortly",
                    details={"model": name, "version": version},
                ) from None
            except ServiceError as exc:
                raise ModelNotReady(
                    f"{name}@{version} cannot be served: {exc.message}",
                    details={"model": name, "version": version},
                ) from exc
        self._last_used[key] = time.monotonic()
        return loaded

    def route(
        self, ref: ModelRef, client_key: ClientKey = None
    ) -> tuple[LoadedModel, hooks.Assignment | None]:
        """The loaded model that serves a request for ``ref``, and its experiment
        assignment (a hooks.Assignment, also set in ``hooks.assignment`` for the request;
        None outside an experiment).

        A request that names no version and no alias, for a model running an experiment,
        goes to the variant the experiment assigns it: sticky for ``client_key``, random by
        weight without one. ``client_key`` may be a function of the experiment, so a front
        end reads the header or body field the experiment names only when one runs. Any
        other request is served as :meth:`get` serves it."""
        # Before the experiment is looked up: a new worker's first look at the store.
        self._ensure_watcher()
        experiment = None
        if ref.version is None and ref.alias is None:
            experiment = self._experiments.get(ref.name)
        if experiment is None:
            hooks.assignment.set(None)
            return self._serve(ref), None
        key = client_key(experiment) if callable(client_key) else client_key
        variant = experiment.assign(key)
        version = variant.version
        if version is None:
            # Through this process's aliases: a promotion moves an alias variant only once
            # its new version is loaded, as it moves the alias.
            version = self._aliases.get(ref.name, {}).get(variant.alias or "")
        if version is None:  # the alias went away since the experiment applied
            hooks.assignment.set(None)
            return self._serve(ref), None
        model = self._serve(ModelRef(ref.name, version=version))
        shadow = experiment.shadow if experiment.wants_shadow() else None
        assignment = hooks.Assignment(
            experiment.id, variant.name, model.version, shadow.target if shadow else None
        )
        hooks.assignment.set(assignment)
        return model, assignment

    def experiment(self, name: str) -> Experiment | None:
        """The experiment this process applies to ``name`` (None: the default alias serves)."""
        return self._experiments.get(name)

    def experiment_problems(self) -> dict[str, str]:
        """Models whose experiment in the store does not apply here, and why."""
        return {name: message for name, (message, _) in self._experiment_problems.items()}

    def key_fields(self, name: str) -> frozenset[str]:
        """The request body fields ``name``'s experiments, running or past, take client keys
        from: a client that sends one is not refused after its experiment ends."""
        return self._key_fields.get(name, NO_FIELDS)

    def served_names(self) -> list[str]:
        if self.settings.models:
            return [n for n in self.settings.models if self.store.has_model(n)]
        if not self.store.exists():
            return []
        return self.store.names()

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self._aliases.get(name, {}))

    def failures(self) -> dict[str, str]:
        return {f"{n}@{v}": message for (n, v), (message, _) in self._failures.items()}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every served model's default alias is loaded in this process."""
        self._ensure_watcher()
        models: dict[str, Any] = {}
        ready = self.last_refresh is not None
        alias = self.settings.default_alias
        for name in self.served_names():
            version = self._aliases.get(name, {}).get(alias)
            wanted = self._store_aliases(name).get(alias)
            entry: dict[str, Any] = {"alias": alias, "version": version, "ready": True}
            if wanted is not None and version != wanted:
                entry["ready"] = False
                entry["wanted"] = wanted
                failure = self._failures.get((name, wanted))
                if failure:
                    entry["error"] = failure[0]
                elif (name, wanted) in self._loading:
                    # Why not ready, while a slow load goes on (none of it in a request).
                    seconds = self._loading_seconds((name, wanted))
                    entry["reason"] = f"loading {name}@{wanted} ({seconds:.0f} s so far)"
            models[name] = entry
            ready = ready and entry["ready"]
        return ready, models

    # -- keeping in step with the store ----------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Load every aliased version whose alias changed since the last look, then switch."""
        with self._refresh_lock:
            names = self.served_names()
            for name in names:
                signature = (
                    self.store.aliases_signature(name),
                    self.store.experiment_signature(name),
                    self._served_metadata(name),
                )
                unchanged = name in self._signatures and self._signatures[name] == signature
                if (
                    unchanged
                    and not force
                    and not self._retry_due(name)
                    and not self._experiment_retry_due(name)
                ):
                    continue
                try:
                    self._sync_model(name)
                except ServiceError as exc:
                    log.error("%s: cannot read its aliases: %s", name, exc.message)
                    continue
                self._sync_experiment(name)
                self._signatures[name] = signature
            for name in set(self._aliases) - set(names):
                del self._aliases[name]
            for name in set(self._experiments) - set(names):
                del self._experiments[name]
            self._drop_idle_versions()
            self.last_refresh = time.monotonic()

    def reload(self) -> None:
        """Forget load failures and look at every model again."""
        self._failures.clear()
        self.refresh(force=True)

    def _served_metadata(self, name: str) -> tuple[Any, ...]:
        served = sorted(set(self._aliases.get(name, {}).values()) | self._experiment_versions(name))
        return tuple((v, self.store.metadata_signature(name, v)) for v in served)

    def _metadata_changed(self, key: tuple[str, int]) -> bool:
        return self.store.metadata_signature(*key) != self._meta_signatures.get(key)

    def _retry_due(self, name: str) -> bool:
        """An alias still waits for a version whose failed load may be tried again."""
        serving = self._aliases.get(name, {})
        return any(
            serving.get(alias) != version and not self._recently_failed((name, version))
            for alias, version in self._wanted.get(name, {}).items()
        )

    def _sync_model(self, name: str) -> None:
        wanted = {alias: int(version) for alias, version in self.store.aliases(name).items()}
        self._wanted[name] = wanted
        current = dict(self._aliases.get(name, {}))
        switched = {}
        for alias, version in wanted.items():
            if self._recently_failed((name, version)):
                continue
            try:
                self._load(name, version)
            except ServiceError:
                continue  # logged and recorded by _load; keep serving what we had
            switched[alias] = version
        for alias in list(current):
            if alias not in wanted:
                del current[alias]
        current.update(switched)
        # One assignment: request threads see the old mapping or the new, never a mix.
        self._aliases[name] = current
        for alias, version in switched.items():
            log.info("%s: alias %s serves version %d", name, alias, version)

    def _sync_experiment(self, name: str) -> None:
        """Apply the store's experiment of ``name`` once every version it serves is loaded;
        when it cannot apply, serve the default alias (no experiment) and say why."""
        try:
            state = self.store.experiment_state(name)
            self._key_fields[name] = _key_fields(state)
            active = state["active"]
            experiment = None if active is None else Experiment.from_dict(name, active)
        except ServiceError as exc:
            self._experiment_failed(name, f"experiment.yaml is not valid: {exc.message}")
            return
        if experiment is None:
            self._experiment_problems.pop(name, None)
            if self._experiments.pop(name, None) is not None:
                log.info(
                    "%s: no experiment runs; alias %s serves", name, self.settings.default_alias
                )
            return
        try:
            for variant in experiment.variants:
                self._target_version(name, variant.name)
        except ServiceError as exc:
            self._experiment_failed(name, f"experiment {experiment.id} cannot run: {exc.message}")
            return
        self._experiment_problems.pop(name, None)
        previous = self._experiments.get(name)
        # One assignment: requests see the old experiment or the new one, never a mix.
        self._experiments[name] = experiment
        if previous != experiment:
            split = ", ".join(f"{v.name}={v.weight:g}" for v in experiment.variants)
            log.info("%s: experiment %s splits requests %s", name, experiment.id, split)

    def _target_version(self, name: str, target: str) -> int:
        """The loaded version a variant or shadow names now (loading a version number)."""
        if target.isdigit():
            version = int(target)
            if self._recently_failed((name, version)):
                raise ModelLoadError(self._failures[(name, version)][0])
            self._load(name, version)
            return version
        version = self._aliases.get(name, {}).get(target)
        if version is None:
            wanted = self._wanted.get(name, {}).get(target)
            if wanted is None:
                raise ModelNotFound(f"{name} has no alias {target!r}")
            failure = self._failures.get((name, wanted))
            reason = failure[0] if failure else "not loaded yet"
            raise ModelNotReady(f"alias {target} ({name}@{wanted}): {reason}")
        return version

    def _experiment_failed(self, name: str, message: str) -> None:
        self._experiments.pop(name, None)
        self._experiment_problems[name] = (message, time.monotonic())
        log.error(
            "%s: %s; alias %s serves every request", name, message, self.settings.default_alias
        )

    def _experiment_retry_due(self, name: str) -> bool:
        problem = self._experiment_problems.get(name)
        return problem is not None and time.monotonic() - problem[1] >= RETRY_FAILED_SECONDS

    def _experiment_versions(self, name: str) -> set[int]:
        """The versions ``name``'s experiment serves by number (its aliases are served
        anyway; its shadow's candidate is loaded by the shadow process, not here)."""
        experiment = self._experiments.get(name)
        if experiment is None:
            return set()
        return {int(v.name) for v in experiment.variants if v.name.isdigit()}

    def _load(self, name: str, version: int) -> LoadedModel:
        key = (name, version)
        with self._load_lock:
            current = self._models.get(key)
            if current is not None and not self._metadata_changed(key):
                return current
            # Taken before reading: a change while loading shows at the next look.
            signature = self.store.metadata_signature(name, version)
            started = time.perf_counter()
            self._loading[key] = time.monotonic()
            try:
                loaded = model_runtime.load(
                    self.store,
                    name,
                    version,
                    refuse_version_mismatch=self.settings.refuse_version_mismatch,
                    backend=self.settings.backend,
                )
            except Exception as exc:
                if isinstance(exc, SignatureRefused):
                    self._tell_refused(name, version, exc.reason)
                if current is None:
                    return self._load_failed(key, exc)
                # The version loaded before still serves; tried again at its next change.
                self._meta_signatures[key] = signature
                log.error(
                    "%s@%d: its metadata changed but it does not load again (%s); "
                    "serving it as loaded before",
                    name,
                    version,
                    exc.message if isinstance(exc, ServiceError) else exc,
                )
                return current
            finally:
                self._loading.pop(key, None)
            self._failures.pop(key, None)
            self._meta_signatures[key] = signature
            loaded.observers = self.observers
            # One assignment: requests get the old LoadedModel or the new one.
            self._models[key] = loaded
            self._last_used[key] = time.monotonic()
            seconds = time.perf_counter() - started
            log.info(
                "%s %s@%d in %.3fs (backend %s)",
                "reloaded" if current is not None else "loaded",
                name,
                version,
                seconds,
                loaded.backend.name,
            )
            for listener in tuple(self.load_listeners):
                try:
                    listener(loaded, seconds)
                except Exception:
                    log.exception("load listener %r failed; the model is served anyway", listener)
            return loaded

    def _tell_refused(self, name: str, version: int, reason: str) -> None:
        for listener in tuple(self.refusal_listeners):
            try:
                listener(name, version, reason)
            except Exception:
                log.exception("refusal listener %r failed", listener)

    def _load_soon(self, name: str, version: int) -> concurrent.futures.Future[LoadedModel]:
        """The load of one version in a thread of its own (one per version at a time), so a
        request can stop waiting for it."""
        key = (name, version)
        with self._pending_lock:
            future = self._pending.get(key)
            if future is None:
                future = concurrent.futures.Future()
                self._pending[key] = future
                threading.Thread(
                    target=self._load_into,
                    args=(key, future),
                    name=f"model-load-{name}@{version}",
                    daemon=True,
                ).start()
        return future

    def _load_into(self, key: tuple[str, int], future: concurrent.futures.Future) -> None:
        try:
            future.set_result(self._load(*key))
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            with self._pending_lock:
                self._pending.pop(key, None)

    def _loading_seconds(self, key: tuple[str, int]) -> float:
        started = self._loading.get(key)
        return 0.0 if started is None else time.monotonic() - started

    def _load_failed(self, key: tuple[str, int], exc: Exception) -> NoReturn:
        name, version = key
        if isinstance(exc, ServiceError):
            self._failures[key] = (exc.message, time.monotonic())
            log.error("cannot load %s@%d: %s", name, version, exc.message)
            raise exc
        self._failures[key] = (f"{type(exc).__name__}: {exc}", time.monotonic())
        log.error("cannot load %s@%d", name, version, exc_info=exc)
        raise ModelLoadError(f"cannot load {name}@{version}: {exc}") from exc

    def _recently_failed(self, key: tuple[str, int]) -> bool:
        failure = self._failures.get(key)
        return failure is not None and time.monotonic() - failure[1] < RETRY_FAILED_SECONDS

    def _drop_idle_versions(self) -> None:
        in_use = {(n, v) for n, aliases in self._aliases.items() for v in aliases.values()}
        in_use |= {(n, v) for n in list(self._experiments) for v in self._experiment_versions(n)}
        horizon = time.monotonic() - IDLE_VERSION_SECONDS
        for key in list(self._models):
            if key not in in_use and self._last_used.get(key, 0) < horizon:
                del self._models[key]
                self._last_used.pop(key, None)
                self._meta_signatures.pop(key, None)

    def _store_aliases(self, name: str) -> dict[str, int]:
        try:
            return self.store.aliases(name)
        except (StoreError, ModelNotFound):
            return {}

    def _is_served(self, name: str) -> bool:
        if self.settings.models and name not in self.settings.models:
            return False
        return name in self._aliases or self.store.has_model(name)

    # -- the watcher thread ----------------------------------------------------

    def _ensure_watcher(self) -> None:
        pid = _pid
        if self._watcher_pid != pid:
            with self._refresh_lock:
                if self._watcher_pid != pid:
                    self._watcher_pid = pid
                    self._stop = threading.Event()
                    self._caught_up = threading.Event()
                    self._catch_up_until = time.monotonic() + REQUEST_LOAD_WAIT_SECONDS
                    thread = threading.Thread(
                        target=self._watch,
                        args=(self._stop, self._caught_up),
                        name="model-store-watcher",
                        daemon=True,
                    )
                    thread.start()
        # A worker forked long after the master loaded the models (max_requests recycling)
        # must not serve an alias that moved since: its first requests wait for the
        # watcher's first look at the store. A load longer than that wait goes on; meanwhile
        # the worker serves what it has, as every worker does while a promoted version loads.
        if not self._caught_up.is_set():
            self._caught_up.wait(max(0.0, self._catch_up_until - time.monotonic()))

    def _watch(self, stop: threading.Event, caught_up: threading.Event) -> None:
        interval = max(0.05, float(self.settings.reload_interval))
        while True:
            try:
                self.refresh()
            except Exception:
                log.exception("refreshing from the model store failed; will try again")
            caught_up.set()
            if stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._watcher_pid = None


def _key_fields(state: dict[str, Any]) -> frozenset[str]:
    """The key fields named by the running experiment and by past starts in its history."""
    entries = [state.get("active") or {}, *(state.get("history") or ())]
    fields = (entry.get("key_field") for entry in entries if isinstance(entry, dict))
    return frozenset(f for f in fields if isinstance(f, str) and FIELD_PATTERN.fullmatch(f))
