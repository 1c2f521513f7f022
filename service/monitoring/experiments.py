"""What each process records of the requests an experiment's variants answer.

A front end calls :func:`record` once a request inside an experiment (``hooks.assignment``
set by the registry's ``route``) has its answer: ok, or failed by the variant (a 5xx, or a
prediction refused for non-finite outputs, 422 ``non_finite_output``). A client's mistake
(any other 4xx: bad input, a wrong key) says nothing about the variant and is not counted.

On the request path :func:`record` costs a few dict look-ups: it bumps the Prometheus
series of the variant (``model_service_experiment_*``, labels model, experiment, variant,
version) and appends a tuple to this process's buffer. A timer (``ProcessFlusher``) writes
the buffer to the host's monitoring state every ``FLUSH_INTERVAL`` seconds, in one
transaction: counts per (experiment, variant, version, latency bucket), and a row per
request (its id, variant, version, ok or failed, latency), so feedback (joined by request
id) gives each variant its live quality. Scrapes publish that quality as gauges read from the state.

Latency is the front end's time from taking the request to having its answer, counted for
answers that succeeded: a variant that fails fast must not look faster for it.

Nothing here imports Flask.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from service.errors import NonFiniteOutput, ServiceError
from service.monitoring import live
from service.monitoring import metrics as service_metrics
from service.monitoring.flusher import BufferedWriter
from service.monitoring.state import StateStore
from service.runtime import hooks

log = logging.getLogger(__name__)

# Upper bounds in seconds, the last +inf: fine enough around a single row's millisecond for
# a p50 and p99 read from the counts (interpolated inside a bucket) to mean something.
FINITE_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
    30.0,
)  # fmt: skip
LATENCY_BUCKETS = (*FINITE_LATENCY_BUCKETS, math.inf)
FLUSH_INTERVAL = live.FLUSH_INTERVAL
# Outcomes held per process while the state cannot be written; beyond, the oldest go.
MAX_BUFFERED = live.MAX_BUFFERED

LABELS = ["model", "experiment", "variant", "version"]


class ExperimentMetrics:
    """The Prometheus series of experiments' variants, in one app's metrics registry
    (None: the default, for the gRPC server's process)."""

    def __init__(self, registry: CollectorRegistry | None):
        self.requests = Counter(
            "model_service_experiment_requests_total",
            "Requests an experiment's variant answered or failed (client mistakes, 4xx other "
            "than non_finite_output, are not counted), over every protocol.",
            LABELS,
            registry=registry,
        )
        self.errors = Counter(
            "model_service_experiment_errors_total",
            "Requests an experiment's variant failed: a 5xx, or outputs refused as non-finite.",
            LABELS,
            registry=registry,
        )
        self.latency = Histogram(
            "model_service_experiment_latency_seconds",
            "Time from the front end taking a request to its answer, for the answers an "
            "experiment's variant gave successfully.",
            LABELS,
            buckets=FINITE_LATENCY_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any, Any]] = {}

    def observe(
        self, model: str, assignment: hooks.Assignment, failure: bool, seconds: float
    ) -> None:
        key = (model, assignment.experiment, assignment.variant, assignment.version)
        children = self._children.get(key)
        if children is None:
            labels = (model, assignment.experiment, assignment.variant, str(assignment.version))
            children = self._children[key] = (
                self.requests.labels(*labels),
                self.errors.labels(*labels),
                self.latency.labels(*labels),
            )
        children[0].inc()
        if failure:
            children[1].inc()
        else:
            children[2].observe(seconds)


def bucket_of(seconds: float) -> int:
    """The index in LATENCY_BUCKETS of the first bound >= seconds (as Histogram does)."""
    return bisect.bisect_left(FINITE_LATENCY_BUCKETS, seconds)


def failed(status: int, code: str | None = None) -> bool | None:
    """Whether an answer with this status (and error code) is the variant's failure:
    True for a 5xx or non-finite outputs, False for a success, None for a client's
    mistake (not counted)."""
    if status >= 500 or code == NonFiniteOutput.code:
        return True
    if status >= 400:
        return None
    return False


def failed_by(exc: BaseException | None) -> bool | None:
    """:func:`failed` for a call that raised ``exc`` (None: it succeeded)."""
    if exc is None:
        return False
    if isinstance(exc, ServiceError):
        return failed(int(exc.status), exc.code)
    return True


class Outcome(NamedTuple):
    time: float
    model: str
    request_id: str | None
    assignment: hooks.Assignment
    failed: bool
    seconds: float


class ExperimentRecorder(BufferedWriter):
    """This process's buffer of outcomes for one state database, and its writer."""

    def __init__(self, state: StateStore):
        self.state = state
        self._init_buffer(FLUSH_INTERVAL, "experiment-flusher", MAX_BUFFERED)

    def append(self, outcome: Outcome) -> None:
        self._append(outcome)

    def flush(self) -> int:
        """Write what this process buffered; returns the outcomes written. Never raises."""
        with self._flush_lock:
            outcomes = self._take_buffered()
            if not outcomes:
                return 0
            counts: dict[tuple[str, str, str, int, int], list[int]] = {}
            requests = []
            for outcome in outcomes:
                a = outcome.assignment
                bucket = bucket_of(outcome.seconds)
                key = (a.experiment, outcome.model, a.variant, a.version, bucket)
                entry = counts.get(key)
                if entry is None:
                    entry = counts[key] = [0, 0]
                entry[0] += 1
                entry[1] += outcome.failed
                if outcome.request_id:
                    row = (outcome.model, outcome.request_id, a.experiment, a.variant, a.version)
                    requests.append((*row, not outcome.failed, outcome.seconds, outcome.time))
            try:
                self.state.write_experiments({k: (n, e) for k, (n, e) in counts.items()}, requests)
            except Exception:
                log.exception(
                    "monitoring: %d experiment answers could not be recorded", len(outcomes)
                )
                return 0
            return len(outcomes)


def record_to(
    recorder: ExperimentRecorder,
    metrics: ExperimentMetrics | None,
    model: str,
    request_id: str | None,
    failure: bool | None,
    seconds: float,
) -> None:
    """The answer to the current request, when it was served inside an experiment:
    ``failure`` as :func:`failed` gives it (None: a client's mistake, not counted)."""
    assignment = hooks.assignment.get()
    if assignment is None or failure is None:
        return
    if metrics is not None:
        metrics.observe(model, assignment, failure, seconds)
    recorder.append(Outcome(time.time(), model, request_id, assignment, failure, seconds))


# -- a front end that builds no app (the gRPC server): one recorder per process ----------
# An app records through its own Monitoring (service.monitoring.hub) instead.

_recorders: dict[Path, ExperimentRecorder] = {}
_recorders_lock = threading.Lock()
_process_metrics: ExperimentMetrics | None = None


def recorder(state: StateStore) -> ExperimentRecorder:
    found = _recorders.get(state.path)
    if found is None:
        with _recorders_lock:
            found = _recorders.get(state.path)
            if found is None:
                found = _recorders[state.path] = ExperimentRecorder(
                    StateStore(state.state_dir, prediction_retention=state.prediction_retention)
                )
    return found


def flush(state_dir: Path | str) -> None:
    """Write this process's buffered outcomes for the state under ``state_dir``, if any:
    readers call it so that what this process answered is in what they read."""
    found = _recorders.get(Path(state_dir) / "state.db")
    if found is not None:
        found.flush()


def record(model: str, request_id: str | None, failure: bool | None, seconds: float) -> None:
    """:func:`record_to` this process's recorder, for the monitor ``live.install`` put in
    place, counted in the default registry once ``metrics.init_process`` turned it on."""
    global _process_metrics
    monitor = live.active()
    if monitor is None:
        return
    if _process_metrics is None and service_metrics.process_metrics() is not None:
        _process_metrics = ExperimentMetrics(None)
    record_to(recorder(monitor.state), _process_metrics, model, request_id, failure, seconds)


T = TypeVar("T")


def observed_call(
    model: str,
    request_id: str | None,
    call: Callable[[], T],
    record: Callable[[str, str | None, bool | None, float], None] = record,
) -> T:
    """Run ``call`` (a front end's whole handling of one prediction request) and ``record``
    its outcome if the request was served inside an experiment; for front ends that see
    the exception itself (gRPC), not an HTTP status."""
    hooks.assignment.set(None)
    started = time.perf_counter()
    try:
        result = call()
    except BaseException as exc:
        if isinstance(exc, Exception):
            record(model, request_id, failed_by(exc), time.perf_counter() - started)
        raise
    record(model, request_id, False, time.perf_counter() - started)
    return result


# -- Prometheus, at scrape time ----------------------------------------------------------


def quality(monitor: live.Monitor, recorder: ExperimentRecorder) -> Iterable[Metric]:
    """Live quality per variant from the feedback joined to its requests (kept ones)."""
    recorder.flush()
    monitor.flush()
    labelled = GaugeMetricFamily(
        "model_service_experiment_labelled",
        "Rows of an experiment variant's requests that got feedback (still kept)",
        labels=LABELS,
    )
    accuracy = GaugeMetricFamily(
        "model_service_experiment_live_accuracy",
        "Classifiers: share of an experiment variant's labelled rows predicted right",
        labels=LABELS,
    )
    mae = GaugeMetricFamily(
        "model_service_experiment_live_mae",
        "Regressors: mean absolute error of an experiment variant's labelled rows",
        labels=LABELS,
    )
    for experiment, model, variant, version, n, correct, abs_sum, _ in sorted(
        monitor.state.experiment_quality()
    ):
        key = [model, experiment, variant, str(version)]
        labelled.add_metric(key, n)
        task = (monitor.metadata(model, version) or {}).get("task")
        if n and task == "classification":
            accuracy.add_metric(key, correct / n)
        elif n and task == "regression":
            mae.add_metric(key, abs_sum / n)
    return [labelled, accuracy, mae]
