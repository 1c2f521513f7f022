"""Shadow traffic: a share of an experiment's requests also runs on a candidate version,
off the request path, and the two answers are compared.

The experiment names the candidate (``Shadow(target, share)`` in
``service.store.experiments``); the registry draws each routed request with
``Experiment.wants_shadow()`` and, when drawn, puts the target in
``hooks.assignment``'s ``shadow``. The observer here hands the work (model, candidate,
the validated input, the primary's answer) to the worker's candidate process
(``shadow_process``, at the lowest CPU priority) with one non-blocking write, and goes on: the
child resolves the candidate, predicts on the same input and compares — the share of
rows with the same label for a classifier, the differences candidate − primary for a
regressor, the candidate's failures by kind — and sends back only those figures.

The worker runs no thread for it: its requests read the child's answers as they pass
(a non-blocking read, when work is out) and give them to the listeners (monitoring:
Prometheus metrics and the host's state). A thread that woke for each answer would take
the worker's GIL from its requests: measured, that alone made the primary's p99 under
load 2-3 times higher (docs/guides/experiments/shadow.md).

At most ``queue_size`` pieces of work are out per worker; past that the work is dropped
and counted — a candidate slower than the traffic sheds shadow work, never production
latency. A candidate busy with one piece for longer than ``timeout`` (after its first
load) is killed and recorded as a timeout; the work behind it is counted as dropped, and
a new process starts at the next shadowed request.

Nothing leaves the worker at exit: unanswered work is dropped, and the child exits when
the worker's end of its socket closes.

Nothing here imports Flask.
"""

from __future__ import annotations

import collections
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
from service.runtime import hooks, shadow_process
from service.runtime.shadow_process import CandidateProcess
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
# compared: it could not have served the request. A process still busy with one piece of
# work this long after it could have started it is killed.
TIMEOUT_SECONDS = 2.0
# What a candidate process may take on top of the timeout to start, or to load a version
# (unpickling, signature and golden-output checks) before it predicts.
LOAD_ALLOWANCE_SECONDS = 60.0

# The candidate's failures, by kind.
UNAVAILABLE = "unavailable"  # the store could not give it (not found, not loadable)
INCOMPATIBLE = "incompatible"  # its features differ from the primary's: no same input
EXCEPTION = "exception"  # its predict raised
NON_FINITE = "non_finite"  # NaN or infinite outputs, which a request would have refused
TIMEOUT = "timeout"  # slower than TIMEOUT_SECONDS
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


@dataclasses.dataclass
class _Job:
    """Work handed to the candidate process, not answered yet."""

    work: ShadowWork
    end: int  # the byte offset at which the child has all of it
    given: float | None = None  # time.monotonic() when it had


class ShadowRunner:
    """One worker's shadow: its candidate process and the work out to it."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        queue_size: int = QUEUE_SIZE,
        timeout: float = TIMEOUT_SECONDS,
    ):
        self.registry = registry
        self.candidates = CandidateProcess(registry.settings)
        self.queue_size = queue_size
        self.timeout = timeout
        # Counts of this process, for tests and the log; the listeners keep the figures.
        self.queued = 0
        self.dropped = 0
        self.runs = 0
        self._jobs: dict[int, _Job] = {}  # in the order handed over: the child's order
        self._unwritten: collections.deque[_Job] = collections.deque()  # not wholly written
        self._ids = itertools.count()
        # When the child last answered (or was given work with none out): the work at the
        # head of the line started no earlier.
        self._progress = 0.0
        self._loading = False
        self._answered = False  # whether this child has answered once (it has started)
        # job id -> its answer, for the work ``run`` waits on (_WAITING until it comes).
        self._awaited: dict[int, Any] = {}
        self._lock = threading.Lock()
        _runners.add(self)

    # -- the request path -------------------------------------------------------

    def observe(self, event: hooks.PredictionEvent) -> None:
        """A ``hooks`` observer: hand the request's work over when its assignment is
        shadowed, and record what the candidate answered meanwhile."""
        if self._jobs:
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
                end = self.candidates.send(_job_message(job_id, work, self.timeout))
            except OSError as exc:
                log.warning("shadow process of %s failed: %s", work.model, exc)
                # The work out to it is lost with it, counted as _service counts it.
                lost = self._lose_all(EXCEPTION)
                self.runs += 1
                return None, [*lost, _failed(work, None, EXCEPTION)]
            if end is None:
                self.dropped += 1
                return None, [work]
            if not self._jobs:
                self._progress = time.monotonic()
            job = self._jobs[job_id] = _Job(work, end)
            self._unwritten.append(job)
            self.queued += 1
            self._note_given()
            return job_id, []

    def _service(self) -> list[ShadowOutcome | ShadowWork]:
        """Write what is pending, read what the child answered, and stop a child stuck on
        one piece of work; what to tell the listeners. Never blocks."""
        with self._lock:
            found: list[ShadowOutcome | ShadowWork] = []
            try:
                self.candidates.flush()
                messages = self.candidates.receive()
            except (EOFError, OSError) as exc:
                log.warning("shadow process failed: %s", exc)
                found.extend(self._lose_all(EXCEPTION))
                return found
            for message in messages:
                found.extend(self._answer(message))
            self._note_given()
            found.extend(self._check_stuck())
            return found

    def _answer(self, message: tuple) -> list[ShadowOutcome]:
        kind, job_id = message[0], message[1]
        if kind == shadow_process.LOADING:
            self._loading = True
            return []
        self._loading = False
        self._answered = True
        self._progress = time.monotonic()
        job = self._jobs.pop(job_id, None)
        if job is None:
            return []
        outcome = None
        if kind != shadow_process.SAME:
            error, version, rows, agreed, differences, seconds, why = message[2:]
            work = job.work
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

    def _note_given(self) -> None:
        """Note when each piece of work is wholly written: before that, the child cannot
        have started it."""
        now, written = time.monotonic(), self.candidates.written_bytes
        waiting = self._unwritten
        while waiting and waiting[0].end <= written:
            waiting.popleft().given = now

    def _check_stuck(self) -> list[ShadowOutcome | ShadowWork]:
        head = next(iter(self._jobs.values()), None)
        if head is None or head.given is None:
            return []
        started = max(head.given, self._progress)
        allowance = 0.0 if self._answered and not self._loading else LOAD_ALLOWANCE_SECONDS
        busy = time.monotonic() - started
        if busy <= self.timeout + allowance:
            return []
        log.warning(
            "shadow candidate %s@%s still busy after %.1f s: stopped",
            head.work.model,
            head.work.candidate,
            busy,
        )
        return self._lose_all(TIMEOUT, busy)

    def _lose_all(self, kind: str, seconds: float = 0.0) -> list[ShadowOutcome | ShadowWork]:
        """The child is gone: the work at the head failed (``kind``), the rest never ran."""
        jobs = list(self._jobs.items())
        self._restart()
        if not jobs:
            return []
        self.runs += 1
        (head_id, head), rest = jobs[0], jobs[1:]
        found: list[ShadowOutcome | ShadowWork] = []
        found.extend(self._deliver(head_id, _failed(head.work, None, kind, seconds)))
        for job_id, job in rest:
            self.dropped += 1
            if job_id in self._awaited:
                self._awaited[job_id] = None
            else:
                found.append(job.work)
        return found

    def _restart(self) -> None:
        self.candidates.close()
        self._jobs.clear()
        self._unwritten.clear()
        self._loading = self._answered = False

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
        # The parent's work and child are the parent's: this process starts with none.
        self._jobs = {}
        self._unwritten = collections.deque()
        self._lock = threading.Lock()
        self._loading = self._answered = False

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
            self.candidates.wait(min(left, 0.05))

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
                self.candidates.wait(0.05)
        finally:
            del self._awaited[job_id]


def _job_message(job_id: int, work: ShadowWork, timeout: float) -> tuple:
    primary = work.primary
    return (
        job_id,
        primary.name,
        work.candidate,
        primary.version,
        primary.task,
        tuple(primary.schema.names),
        work.model_input,
        work.predictions,
        timeout,
    )


# -- in the candidate process -------------------------------------------------------------


def run_candidate(
    store: ModelStore,
    settings: Settings,
    models: dict[tuple[str, int], LoadedModel],
    job: tuple,
    tell: Callable[[Any], None],
) -> tuple:
    """One piece of work, in the candidate process: the answer to send back.
    ``models`` keeps the versions it loaded; ``tell`` sends a note before a load."""
    from service.runtime.model import load

    job_id, name, target, primary_version, task, names, model_input, predictions, timeout = job

    def done(error, version=None, rows=0, agreed=0, differences=None, seconds=0.0, why=""):
        return (
            shadow_process.DONE,
            job_id,
            error,
            version,
            rows,
            agreed,
            differences,
            seconds,
            why,
        )

    try:
        version = store.resolve(target_ref(name, target))
    except ServiceError as exc:
        return done(UNAVAILABLE, why=exc.message)
    if version == primary_version:
        return (shadow_process.SAME, job_id)
    candidate = models.get((name, version))
    if candidate is None:
        tell((shadow_process.LOADING, job_id))
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


def prestart() -> None:
    """In a new Gunicorn worker, before it runs any thread (post_fork): when a shadow runs
    in the store, fork the active runner's candidate process now, so it starts with
    everything imported rather than importing it all at the first shadowed request —
    at every worker restart (``max_requests``), seconds of CPU the requests would feel."""
    runner = _active
    if runner is None:
        return
    try:
        store = runner.registry.store
        if not any(_shadowed(store, name) for name in store.names()):
            return
        runner.candidates.fork_now()
    except Exception:
        log.exception("could not start the shadow process ahead")


def _shadowed(store: ModelStore, name: str) -> bool:
    experiment = store.experiment(name)
    return experiment is not None and experiment.shadow is not None


def _reset_in_child() -> None:
    for runner in list(_runners):
        runner._after_fork()


os.register_at_fork(after_in_child=_reset_in_child)
