"""Shadow traffic: a share of an experiment's requests also runs on a candidate version,
off the request path, and the two answers are compared.

The experiment names the candidate (``Shadow(target, share)`` in
``service.store.experiments``); the registry draws each routed request with
``Experiment.wants_shadow()`` and, when drawn, puts the target in
``hooks.assignment``'s ``shadow``. The observer here hands the work (model, candidate,
the validated input, the primary's answer) to the shadow process (``shadow_server``, one
per Gunicorn master, at the lowest CPU priority) with one non-blocking write, and goes
on: the candidate resolves the target, predicts on the same input and compares — the
share of rows with the same label for a classifier, the differences candidate − primary
for a regressor, the candidate's failures by kind — and sends back only those figures.

The worker runs no thread for it: its requests read the answers as they pass (a
non-blocking read, when work is out) and give them to the listeners (monitoring:
Prometheus metrics and the host's state). A thread that woke for each answer would take
the worker's GIL from its requests: measured, that alone made the primary's p99 under
load 2-3 times higher (docs/guides/experiments/shadow.md).

At most ``queue_size`` pieces of work are out per worker; past that the work is dropped
and counted — a candidate slower than the traffic sheds shadow work, never production
latency. The shadow process answers every piece it was given: a candidate busy with one
for longer than its ``timeout`` is stopped there and the piece recorded as a timeout.
Only when the shadow process itself goes is the work out to it lost (the first piece
recorded as failed, the rest as dropped).

Nothing leaves the worker at exit: unanswered work is dropped.

Nothing here imports Flask.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import ServiceError
from service.runtime import hooks, shadow_process, shadow_server
from service.runtime.shadow_process import ShadowLink
from service.store.layout import ModelRef

if TYPE_CHECKING:
    from service.config import Settings
    from service.runtime.model import LoadedModel
    from service.runtime.registry import ModelRegistry
    from service.store import ModelStore

log = logging.getLogger(__name__)

# Work out per worker (handed to its candidate process, not answered yet), at most. At
# the 0.1-0.2 shares shadows run at, a candidate as fast as the primary keeps it near
# empty; one slower than the traffic fills it, and then each new request's work is
# dropped (counted) instead of waiting: queued work is stale work, and its input is held
# (in the socket) until the candidate takes it.
QUEUE_SIZE = 100
# A candidate's prediction that took longer than this is recorded as a timeout, not
# compared: it could not have served the request. A candidate still busy with one piece
# of work this long after it got it is stopped (shadow_server, with an allowance for
# starting and loading).
TIMEOUT_SECONDS = 2.0
# A worker's requests read the answers that arrived at most this often: a read is a
# system call, and at 80 % load every few microseconds a request spends show in the p99
# many times over (queueing). The figures lag by as much; a scrape reads them all.
SERVICE_INTERVAL_SECONDS = 0.01

# The candidate's failures, by kind.
UNAVAILABLE = "unavailable"  # the store could not give it (not found, not loadable)
INCOMPATIBLE = "incompatible"  # its features differ from the primary's: no same input
EXCEPTION = shadow_process.EXCEPTION  # its predict raised, or its process died
NON_FINITE = "non_finite"  # NaN or infinite outputs, which a request would have refused
TIMEOUT = shadow_process.TIMEOUT  # slower than TIMEOUT_SECONDS
ERROR_KINDS = (UNAVAILABLE, INCOMPATIBLE, EXCEPTION, NON_FINITE, TIMEOUT)


@dataclasses.dataclass(frozen=True)
class ShadowWork:
    """One shadowed request, as the observer queued it."""

    primary: LoadedModel  # the version that answered
    experiment: str
    candidate: str  # the target as the experiment names it: a version or an alias
    model_input: Any  # the primary's validated input (PredictionEvent.model_input)
    predictions: list[Any]  # the primary's answer

    @property
    def model(self) -> str:
        return self.primary.name


@dataclasses.dataclass(frozen=True)
class ShadowOutcome:
    """What one run of the candidate found."""

    primary: LoadedModel
    experiment: str
    candidate: str
    candidate_version: int | None  # None when the store could not give it
    rows: int  # rows compared; 0 on an error
    agreed: int  # classifier: rows whose label is the primary's
    differences: np.ndarray | None  # regressor: candidate - primary, per row
    error: str | None  # one of ERROR_KINDS, or None
    seconds: float  # the candidate's prediction (0 when it did not run)

    @property
    def model(self) -> str:
        return self.primary.name

    @property
    def primary_version(self) -> int:
        return self.primary.version


OutcomeListener = Callable[[ShadowOutcome], None]
DropListener = Callable[[ShadowWork], None]

# Told of every run and every drop, in the request that finds it: keep them cheap.
outcome_listeners: list[OutcomeListener] = []
drop_listeners: list[DropListener] = []


def target_ref(model: str, target: str) -> ModelRef:
    if target.isdigit():
        return ModelRef(model, version=int(target))
    return ModelRef(model, alias=target)


_WAITING = object()


class ShadowRunner:
    """One worker's shadow: its link to the shadow process and the work out to it."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        queue_size: int = QUEUE_SIZE,
        timeout: float = TIMEOUT_SECONDS,
    ):
        self.registry = registry
        self.link = ShadowLink(registry.settings)
        self.queue_size = queue_size
        self.timeout = timeout
        # Counts of this process, for tests and the log; the listeners keep the figures.
        self.queued = 0
        self.dropped = 0
        self.runs = 0
        self._jobs: dict[int, ShadowWork] = {}  # in the order handed over
        self._ids = itertools.count()
        # job id -> its answer, for the work ``run`` waits on (_WAITING until it comes).
        self._awaited: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._next_service = 0.0  # time.monotonic() after which a request reads answers
        _runners.add(self)

    # -- the request path -------------------------------------------------------

    def observe(self, event: hooks.PredictionEvent) -> None:
        """A ``hooks`` observer: hand the request's work over when its assignment is
        shadowed, and record what the candidate answered meanwhile."""
        if self._jobs:
            now = time.monotonic()
            if now >= self._next_service:
                self._next_service = now + SERVICE_INTERVAL_SECONDS
                self._notify(self._service())
        assignment = hooks.assignment.get()
        if assignment is None or assignment.shadow is None:
            return
        model = event.model
        # The assignment is the request's; a prediction of another version in the same
        # context (none today) is not the one the experiment routed.
        if assignment.version != model.version:
            return
        work = ShadowWork(
            model,
            assignment.experiment,
            assignment.shadow,
            event.model_input,
            event.prediction.predictions,
        )
        self._notify(self._submit(work)[1])

    def _submit(self, work: ShadowWork) -> tuple[int | None, list[ShadowOutcome | ShadowWork]]:
        """Hand ``work`` over: its id (None when it was not), and what to tell the
        listeners (a drop, or a failure)."""
        with self._lock:
            if len(self._jobs) >= self.queue_size:
                self.dropped += 1
                return None, [work]
            job_id = next(self._ids)
            try:
                handed = self.link.send(job_id, _job_message(work), self.timeout)
            except OSError as exc:
                log.warning("shadow process of %s failed: %s", work.model, exc)
                # The work out to it is lost with it, counted as _service counts it.
                lost = self._lose_all()
                self.runs += 1
                return None, [*lost, _failed(work, None, EXCEPTION)]
            if not handed:
                self.dropped += 1
                return None, [work]
            self._jobs[job_id] = work
            self.queued += 1
            return job_id, []

    def _service(self) -> list[ShadowOutcome | ShadowWork]:
        """Write what is pending and read what the shadow process answered; what to tell
        the listeners. Never blocks."""
        with self._lock:
            try:
                self.link.flush()
                messages = self.link.receive()
            except (EOFError, OSError) as exc:
                log.warning("shadow process failed: %s", exc)
                return self._lose_all()
            found: list[ShadowOutcome | ShadowWork] = []
            for kind, job_id, message in messages:
                found.extend(self._answer(kind, job_id, message))
            return found

    def _answer(self, kind: int, job_id: int, message: bytes) -> list[ShadowOutcome]:
        work = self._jobs.pop(job_id, None)
        if work is None:
            return []
        outcome = None
        if kind == shadow_process.ANSWER:
            error, version, rows, agreed, differences, seconds, why = shadow_process.payload(
                message
            )
            if why:
                log.warning(
                    "shadow candidate %s@%s failed: %s", work.model, version or work.candidate, why
                )
            self.runs += 1
            outcome = ShadowOutcome(
                work.primary,
                work.experiment,
                work.candidate,
                version,
                rows,
                agreed,
                differences,
                error,
                seconds,
            )
        return self._deliver(job_id, outcome)

    def _deliver(self, job_id: int, outcome: ShadowOutcome | None) -> list[ShadowOutcome]:
        """To the listeners, or to ``run`` when it waits for this answer."""
        if job_id in self._awaited:
            self._awaited[job_id] = outcome
            return []
        return [outcome] if outcome is not None else []

    def _lose_all(self) -> list[ShadowOutcome | ShadowWork]:
        """The shadow process is gone: the work at the head failed with it, the rest
        never ran."""
        jobs = list(self._jobs.items())
        self._restart()
        if not jobs:
            return []
        self.runs += 1
        (head_id, head), rest = jobs[0], jobs[1:]
        found: list[ShadowOutcome | ShadowWork] = []
        found.extend(self._deliver(head_id, _failed(head, None, EXCEPTION)))
        for job_id, work in rest:
            self.dropped += 1
            if job_id in self._awaited:
                self._awaited[job_id] = None
            else:
                found.append(work)
        return found

    def _restart(self) -> None:
        self.link.close()
        self._jobs.clear()

    @staticmethod
    def _notify(found: list[ShadowOutcome | ShadowWork]) -> None:
        for item in found:
            listeners = outcome_listeners if isinstance(item, ShadowOutcome) else drop_listeners
            for listener in tuple(listeners):
                try:
                    listener(item)
                except Exception:
                    log.exception("shadow listener %r failed", listener)

    # -- tests, benchmarks, the end ---------------------------------------------------

    def _after_fork(self) -> None:
        # The parent's work and connection are the parent's: this process starts with none.
        self._jobs = {}
        self._lock = threading.Lock()

    def stop(self) -> None:
        with self._lock:
            self._restart()

    def pending(self) -> int:
        return len(self._jobs)

    def collect(self) -> None:
        """Record the answers that have arrived, without waiting: for readers of the
        figures (the admin API, a report), so an idle worker's last answers count too."""
        if self._jobs:
            self._notify(self._service())

    def drain(self, timeout: float) -> bool:
        """Wait until the candidate has answered every piece of work out (tests,
        benchmarks), recording the answers; whether it was within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._notify(self._service())
            if not self._jobs:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.link.wait(min(left, 0.05))

    def run(self, work: ShadowWork) -> ShadowOutcome | None:
        """Hand ``work`` over and wait for the candidate's answer (tests, tools); None when
        the candidate is the version that answered (nothing to compare) or the work was
        dropped. Other work's answers found meanwhile go to the listeners."""
        job_id, found = self._submit(work)
        if job_id is None:
            self._notify([item for item in found if not isinstance(item, ShadowOutcome)])
            return next((item for item in found if isinstance(item, ShadowOutcome)), None)
        self._awaited[job_id] = _WAITING
        try:
            while True:
                self._notify(self._service())
                answer = self._awaited[job_id]
                if answer is not _WAITING:
                    return answer
                if job_id not in self._jobs:  # stopped meanwhile
                    return None
                self.link.wait(0.05)
        finally:
            del self._awaited[job_id]


def _job_message(work: ShadowWork) -> tuple:
    primary = work.primary
    return (
        primary.name,
        work.candidate,
        primary.version,
        primary.task,
        tuple(primary.schema.names),
        work.model_input,
        work.predictions,
    )


# -- in the candidate process -------------------------------------------------------------


def run_candidate(
    store: ModelStore,
    settings: Settings,
    models: dict[tuple[str, int], LoadedModel],
    job_id: int,
    job: tuple,
    timeout: float,
    loading: Callable[[], None],
) -> bytes:
    """One piece of work, in the candidate process: the answer to send back.
    ``models`` keeps the versions it loaded; ``loading`` says a load begins."""
    from service.runtime.model import load

    name, target, primary_version, task, names, model_input, predictions = job

    def done(error, version=None, rows=0, agreed=0, differences=None, seconds=0.0, why=""):
        answer = (error, version, rows, agreed, differences, seconds, why)
        return shadow_process.frame(shadow_process.ANSWER, job_id, answer)

    try:
        version = store.resolve(target_ref(name, target))
    except ServiceError as exc:
        return done(UNAVAILABLE, why=exc.message)
    if version == primary_version:
        return shadow_process.frame(shadow_process.SAME, job_id)
    candidate = models.get((name, version))
    if candidate is None:
        loading()
        try:
            candidate = models[(name, version)] = load(
                store,
                name,
                version,
                refuse_version_mismatch=settings.refuse_version_mismatch,
                backend=settings.backend,
            )
        except ServiceError as exc:
            return done(UNAVAILABLE, version, why=exc.message)
    if tuple(candidate.schema.names) != tuple(names):
        return done(INCOMPATIBLE, version)
    started = time.perf_counter()
    try:
        answer = candidate.predict_prepared(model_input, with_proba=False).predictions
    except Exception as exc:
        why = f"{type(exc).__name__}: {str(exc).partition(chr(10))[0]}"
        return done(EXCEPTION, version, seconds=time.perf_counter() - started, why=why)
    seconds = time.perf_counter() - started
    if seconds > timeout:
        return done(TIMEOUT, version, seconds=seconds)
    error, rows, agreed, differences = compare(task, predictions, answer)
    return done(error, version, rows, agreed, differences, seconds)


def compare(
    task: str, primary: list[Any], candidate: list[Any]
) -> tuple[str | None, int, int, np.ndarray | None]:
    """The candidate's answer next to the primary's, in numpy: (error kind or None, rows,
    rows that agree (classifier), differences candidate - primary (regressor))."""
    rows = len(primary)
    if len(candidate) != rows:
        return EXCEPTION, 0, 0, None
    if task == "classification":
        return None, rows, int(np.count_nonzero(_labels(candidate) == _labels(primary))), None
    mine = np.asarray(candidate, dtype=np.float64)
    if not np.isfinite(mine).all():
        return NON_FINITE, 0, 0, None
    return None, rows, 0, mine - np.asarray(primary, dtype=np.float64)


def _labels(values: list[Any]) -> np.ndarray:
    # Labels of one model are all strings or all numbers: a typed array compares in C.
    array = np.asarray(values)
    return array.astype(str) if array.dtype == object else array


def _failed(
    work: ShadowWork, version: int | None, kind: str, seconds: float = 0.0
) -> ShadowOutcome:
    return ShadowOutcome(
        work.primary, work.experiment, work.candidate, version, 0, 0, None, kind, seconds
    )


# -- installing ------------------------------------------------------------------------

_runners: weakref.WeakSet[ShadowRunner] = weakref.WeakSet()
_active: ShadowRunner | None = None


def install(registry: ModelRegistry, *, queue_size: int = QUEUE_SIZE) -> ShadowRunner:
    """Shadow the experiment requests ``registry``'s models serve (one runner, and one
    candidate process, per process: a runner installed before is stopped, and the models
    of its registry are no longer shadowed)."""
    global _active
    previous, _active = _active, ShadowRunner(registry, queue_size=queue_size)
    if previous is not None:
        previous.stop()
        previous.registry.observers.remove(previous.observe)
    registry.observers.add(_active.observe)
    return _active


def active() -> ShadowRunner | None:
    return _active


def start_host() -> None:
    """In the Gunicorn master, before it forks its workers (when_ready): the one shadow
    process they all hand their work to, so a worker (re)start costs it nothing."""
    runner = _active
    if runner is None:
        return
    try:
        shadow_server.start_host(runner.registry.settings)
    except Exception:
        log.exception("could not start the shadow process: each worker will start its own")


def _reset_in_child() -> None:
    for runner in list(_runners):
        runner._after_fork()


os.register_at_fork(after_in_child=_reset_in_child)
