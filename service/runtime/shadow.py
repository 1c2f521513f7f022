"""Shadow traffic: a share of an experiment's requests also runs on a candidate version,
off the request path, and the two answers are compared.

The experiment names the candidate (``Shadow(target, share)`` in
``service.store.experiments``); the registry draws each routed request with
``Experiment.wants_shadow()`` and, when drawn, puts the target in
``hooks.assignment``'s ``shadow``. The observer here then only appends the work (model,
candidate, the validated input, the primary's answer) to a bounded queue: O(1), never
blocking, never raising. When the queue is full the work is dropped and counted — a
candidate slower than the traffic sheds shadow work, never production latency.

A daemon thread per process (started lazily, after Gunicorn's fork, like the registry's
watcher) takes the work, asks the registry which version the candidate is (and that it
takes the primary's features), has it predict on the same input and compares: the share
of rows with the same label for a classifier, the differences candidate − primary for a
regressor, and the candidate's failures by kind. What it finds goes to the listeners
(monitoring: Prometheus metrics and the host's state).

The candidate predicts in a process of its own (``shadow_process``: one per worker,
started at its first shadow run, at the lowest CPU priority), from the validated input
(``predict_prepared``: no validation again, no observers, nothing logged as served). In
the worker's own process its scikit-learn work would hold the worker's GIL, and a thread
preempted while holding it stalls the requests: measured, that made the primary's p99
1.2-1.7 times higher under a 20 % shadow (docs/experiments/shadow.md). The thread itself
sends, waits on a socket (the GIL let go) and compares in numpy. A run longer than
``TIMEOUT_SECONDS`` kills the child (a new one starts at the next run). ``isolated=False``
predicts in this process instead (tests, an embedding program), paced by ``CPU_SHARE``.

Nothing leaves the process at exit: the thread is a daemon, queued work is dropped, and
the child exits when the worker's end of its socket closes.

Nothing here imports Flask.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
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
    from service.runtime.model import LoadedModel
    from service.runtime.registry import ModelRegistry

log = logging.getLogger(__name__)

# Work waiting per process. At the 0.1-0.2 shares shadows run at, a candidate as fast as
# the primary keeps the queue near empty; one slower than the traffic fills it, and then
# each new request's work is dropped (counted) instead of waiting: queued work is stale
# work, and memory is held per item (the request's validated input).
QUEUE_SIZE = 100
# A candidate's prediction that took longer than this is recorded as a timeout, not
# compared: it could not have served the request. Its process is killed.
TIMEOUT_SECONDS = 2.0
# The shadow thread's CPU time, as a share of one core: after each run it pauses long
# enough to stay within it (work arriving meanwhile queues, then drops). It counts the
# candidate's computing only when it predicts in this process (isolated=False); else the
# thread's own sending and comparing, and the child's niceness keeps it off the requests.
CPU_SHARE = 0.05
# The longest pause after one run, whatever it cost.
MAX_PAUSE_SECONDS = 10.0
# A run starts once the process has predicted nothing for QUIET_SECONDS: with sync
# workers the observer fires inside the request, and the answer (encoding, sending) should
# go out before the shadow thread wants the GIL. Under traffic with no such gap it starts
# after MAX_DEFER_SECONDS anyway.
QUIET_SECONDS = 0.005
MAX_DEFER_SECONDS = 0.1
# How often an idle thread looks whether it was stopped.
_IDLE_POLL_SECONDS = 1.0

# The candidate's failures, by kind.
UNAVAILABLE = "unavailable"  # the registry could not give it (not found, not loaded)
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
    candidate_version: int | None  # None when the registry could not give it
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

# Told of every run (in the shadow thread) and every drop (in the request: keep it O(1)).
outcome_listeners: list[OutcomeListener] = []
drop_listeners: list[DropListener] = []


def target_ref(model: str, target: str) -> ModelRef:
    if target.isdigit():
        return ModelRef(model, version=int(target))
    return ModelRef(model, alias=target)


class ShadowRunner:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        queue_size: int = QUEUE_SIZE,
        timeout: float = TIMEOUT_SECONDS,
        cpu_share: float = CPU_SHARE,
        isolated: bool = True,
    ):
        self.registry = registry
        # The candidate computes in a process of its own (shadow_process), or here.
        self.candidates = CandidateProcess(registry.settings) if isolated else None
        self.queue_size = queue_size
        self.timeout = timeout
        self.cpu_share = cpu_share
        # Counts of this process, for tests and the log; the listeners keep the figures.
        self.queued = 0
        self.dropped = 0
        self.runs = 0
        self.cpu_seconds = 0.0  # the shadow thread's, over its runs
        self._last_prediction = 0.0  # time.monotonic() of this process's last prediction
        self._queue: queue.Queue[ShadowWork] = queue.Queue(queue_size)
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        _runners.add(self)

    # -- the request path -------------------------------------------------------

    def observe(self, event: hooks.PredictionEvent) -> None:
        """A ``hooks`` observer: queue the request's work when its assignment is shadowed."""
        self._last_prediction = time.monotonic()
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
        if self._pid != os.getpid():
            self._start()
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            self.dropped += 1
            for listener in tuple(drop_listeners):
                try:
                    listener(work)
                except Exception:
                    log.exception("shadow drop listener %r failed", listener)
            return
        self.queued += 1

    def _start(self) -> None:
        with self._start_lock:
            pid = os.getpid()
            if self._pid == pid:
                return
            self._stop = threading.Event()
            threading.Thread(
                target=self._work, args=(self._queue, self._stop), name="shadow", daemon=True
            ).start()
            self._pid = pid

    def _after_fork(self) -> None:
        # The parent's thread may have held the queue's lock at the fork, and its work
        # is the parent's: the child starts with a queue of its own.
        self._queue = queue.Queue(self.queue_size)
        self._start_lock = threading.Lock()
        self._pid = None

    def stop(self) -> None:
        self._stop.set()
        self._pid = None
        if self.candidates is not None:
            self.candidates.close()

    def pending(self) -> int:
        return self._queue.qsize()

    # -- the shadow thread --------------------------------------------------------

    def _work(self, work_queue: queue.Queue[ShadowWork], stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                work = work_queue.get(timeout=_IDLE_POLL_SECONDS)
            except queue.Empty:
                continue
            if self._wait_quiet(stop):
                work_queue.task_done()
                return
            spent = time.thread_time()
            try:
                self._process(work)
            finally:
                work_queue.task_done()
            # This thread's CPU time only: a candidate's sleep or I/O costs the requests
            # nothing, its computing does.
            spent = time.thread_time() - spent
            self.cpu_seconds += spent
            pause = min(spent * (1.0 / self.cpu_share - 1.0), MAX_PAUSE_SECONDS)
            if pause > 0 and stop.wait(pause):
                return

    def _wait_quiet(self, stop: threading.Event) -> bool:
        """Wait for a pause in this process's predictions (at most MAX_DEFER_SECONDS);
        whether the runner was stopped meanwhile."""
        deadline = time.monotonic() + MAX_DEFER_SECONDS
        while True:
            now = time.monotonic()
            wait = min(self._last_prediction + QUIET_SECONDS, deadline) - now
            if wait <= 0:
                return False
            if stop.wait(wait):
                return True

    def _process(self, work: ShadowWork) -> None:
        try:
            outcome = self.run(work)
        except Exception:
            log.exception("shadow run of %s on %s failed", work.model, work.candidate)
            return
        if outcome is None:
            return
        self.runs += 1
        for listener in tuple(outcome_listeners):
            try:
                listener(outcome)
            except Exception:
                log.exception("shadow outcome listener %r failed", listener)

    def drain(self, timeout: float) -> bool:
        """Wait until this process's queue is empty and its work done (tests, benchmarks);
        whether it was within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def run(self, work: ShadowWork) -> ShadowOutcome | None:
        """Predict ``work`` on its candidate and compare; None when the candidate is the
        version that answered (nothing to compare)."""
        try:
            candidate = self.registry.get(target_ref(work.model, work.candidate))
        except ServiceError as exc:
            log.warning(
                "shadow candidate %s@%s unavailable: %s", work.model, work.candidate, exc.message
            )
            return _failed(work, None, UNAVAILABLE)
        primary = work.primary
        if candidate.version == primary.version:
            return None
        if candidate.schema.names != primary.schema.names:
            return _failed(work, candidate.version, INCOMPATIBLE)
        if self.candidates is not None:
            return self._run_isolated(work, candidate)
        started = time.perf_counter()
        try:
            prediction = candidate.predict_prepared(work.model_input, with_proba=False)
        except Exception as exc:
            self._log_failure(work, candidate, f"{type(exc).__name__}: {exc}")
            return _failed(work, candidate.version, EXCEPTION, time.perf_counter() - started)
        seconds = time.perf_counter() - started
        if seconds > self.timeout:
            return _failed(work, candidate.version, TIMEOUT, seconds)
        return compare(work, candidate, prediction.predictions, seconds)

    def _run_isolated(self, work: ShadowWork, candidate: LoadedModel) -> ShadowOutcome:
        started = time.perf_counter()
        try:
            status, value, seconds = self.candidates.predict(
                candidate.name, candidate.version, work.model_input, self.timeout
            )
        except OSError as exc:
            self._log_failure(work, candidate, str(exc))
            return _failed(work, candidate.version, EXCEPTION, time.perf_counter() - started)
        if status == shadow_process.TIMED_OUT:
            return _failed(work, candidate.version, TIMEOUT, seconds)
        if status != shadow_process.OK:
            self._log_failure(work, candidate, str(value))
            return _failed(work, candidate.version, EXCEPTION, seconds)
        if seconds > self.timeout:
            return _failed(work, candidate.version, TIMEOUT, seconds)
        return compare(work, candidate, value, seconds)

    @staticmethod
    def _log_failure(work: ShadowWork, candidate: LoadedModel, problem: str) -> None:
        log.warning(
            "shadow candidate %s@%d failed: %s",
            work.model,
            candidate.version,
            problem.partition("\n")[0],
        )


def compare(
    work: ShadowWork, candidate: LoadedModel, predictions: list[Any], seconds: float
) -> ShadowOutcome:
    """The candidate's answer next to the primary's, in numpy."""
    rows = len(work.predictions)
    if len(predictions) != rows:
        return _failed(work, candidate.version, EXCEPTION, seconds)
    agreed = 0
    differences = None
    if work.primary.task == "classification":
        mine, theirs = _labels(predictions), _labels(work.predictions)
        agreed = int(np.count_nonzero(mine == theirs))
    else:
        mine = np.asarray(predictions, dtype=np.float64)
        if not np.isfinite(mine).all():
            return _failed(work, candidate.version, NON_FINITE, seconds)
        differences = mine - np.asarray(work.predictions, dtype=np.float64)
    return ShadowOutcome(
        work.primary,
        work.experiment,
        work.candidate,
        candidate.version,
        rows,
        agreed,
        differences,
        None,
        seconds,
    )


def _labels(values: list[Any]) -> np.ndarray:
    # Labels of one model are all strings or all numbers: a typed array compares in C.
    array = np.asarray(values)
    return array.astype(str) if array.dtype == object else array


def _failed(
    work: ShadowWork, version: int | None, kind: str, seconds: float = 0.0
) -> ShadowOutcome:
    return ShadowOutcome(
        work.primary,
        work.experiment,
        work.candidate,
        version,
        0,
        0,
        None,
        kind,
        seconds,
    )


# -- installing ------------------------------------------------------------------------

_runners: weakref.WeakSet[ShadowRunner] = weakref.WeakSet()
_active: ShadowRunner | None = None


def _observe(event: hooks.PredictionEvent) -> None:
    runner = _active
    if runner is not None:
        runner.observe(event)


def install(registry: ModelRegistry, *, queue_size: int = QUEUE_SIZE) -> ShadowRunner:
    """Shadow this process's experiment requests through ``registry`` (replacing any
    runner installed before: the last app built in a process serves)."""
    global _active
    previous, _active = _active, ShadowRunner(registry, queue_size=queue_size)
    if previous is not None:
        previous.stop()
    hooks.add_observer(_observe)
    return _active


def active() -> ShadowRunner | None:
    return _active


def _reset_in_child() -> None:
    for runner in list(_runners):
        runner._after_fork()


os.register_at_fork(after_in_child=_reset_in_child)
