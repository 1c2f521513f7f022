"""Prometheus metrics: what was asked, what was served, what was loaded.

Under Gunicorn (``PROMETHEUS_MULTIPROC_DIR`` set by the start script before any process
imports prometheus_client) every process writes its samples to files in that directory
and a scrape merges them: counters and histograms of a dead worker stay in the sums, so
a killed worker's counts are neither lost nor counted twice. Without the variable (tests,
an embedding program) the metrics live in the process's default registry.

Prediction metrics come from an observer of ``service.runtime.hooks``, so the native,
v2, MLflow and gRPC front ends count alike; request metrics come from the Flask hooks in
``service.api.observe``. Both are registered by :func:`init_app` (or, in the gRPC server
process, :func:`init_process`) and only when the ``metrics`` setting is on. Registration
is process-wide: the last app built in a process decides (one per process in production).

``model_service_model_info`` is computed at scrape time from the models loaded in the
process answering the scrape. A gauge written at load time would be stale in every
multiprocess mode: under ``preload_app`` the Gunicorn master loads the models once and
never unloads them, so "max" would keep every version any process ever loaded, and
"liveall" would keep the master's start-up set (and add a pid label to every series).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service import monitoring
from service.runtime import hooks, shadow
from service.store import signing

if TYPE_CHECKING:
    from service.config import Settings
    from service.runtime.model import LoadedModel
    from service.runtime.registry import ModelRegistry

log = logging.getLogger(__name__)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
NO_LABEL = ""

# 1 ms to 10 s: a single row is served in about a millisecond, a 10,000-row batch of a
# forest in seconds.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INSTANCE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# For a regressor whose metadata has no test points to take the target's range from.
DEFAULT_VALUE_BUCKETS = (0, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000)
VALUE_BUCKET_COUNT = 10
# Up to this many values, observing one by one is cheaper than counting with numpy.
SMALL_BATCH = 8

REQUESTS = Counter(
    "model_service_requests_total",
    "HTTP requests answered, by route (the URL rule), model, version and status; model and "
    "version are empty when the request named no served model or nothing was predicted.",
    ["route", "model", "version", "status"],
)
REQUEST_DURATION = Histogram(
    "model_service_request_duration_seconds",
    "Time from the app receiving an HTTP request to its response being ready.",
    ["route", "model"],
    buckets=DURATION_BUCKETS,
)
INSTANCES = Histogram(
    "model_service_instances_per_request",
    "Instances (rows) in each served prediction, over every protocol.",
    ["model"],
    buckets=INSTANCE_BUCKETS,
)
VALIDATION_FAILURES = Counter(
    "model_service_validation_failures_total",
    "Requests refused for their body (400, 413, 415, 422), by error code; invalid_input "
    "carries the kind of the first problem, e.g. invalid_input:unknown_category.",
    ["model", "reason"],
)
MODEL_LOAD = Histogram(
    "model_service_model_load_seconds",
    "Time to load a model version (verify, unpickle, check, replay the golden example), "
    "one observation per load in any process.",
    ["model", "version"],
    buckets=LOAD_BUCKETS,
)
SIGNATURE_REFUSALS = Counter(
    "model_service_signature_refusals_total",
    "Versions refused before unpickling because their signature did not verify against a "
    "trusted key (trusted_signing_keys), by reason: unsigned, untrusted_key, mismatch (a "
    "file changed after signing), invalid; one per attempt to load, in any process.",
    ["model", "version", "reason"],
)
PREDICTIONS = Counter(
    "model_service_predictions_total",
    "Predicted labels served by classifiers, by class, over every protocol.",
    ["model", "version", "class"],
)
WORKER_STARTS = Counter(
    "model_service_worker_starts_total",
    "Gunicorn workers started since the service started (each post_fork); restarts are "
    "this minus the configured worker count.",
)
SHADOW_RUNS = Counter(
    "model_service_shadow_runs_total",
    "Requests run again on an experiment's shadow candidate after the primary answered "
    "(service.runtime.shadow), failed ones included; candidate is the target the "
    "experiment names (a version or an alias).",
    ["model", "candidate"],
)
SHADOW_DROPPED = Counter(
    "model_service_shadow_dropped_total",
    "Shadow work dropped because the process's shadow queue was full: the candidate is "
    "slower than the shadowed traffic.",
    ["model", "candidate"],
)
SHADOW_ERRORS = Counter(
    "model_service_shadow_errors_total",
    "Shadow runs the candidate failed, by kind: unavailable, incompatible, exception, "
    "non_finite, timeout.",
    ["model", "candidate", "kind"],
)
SHADOW_ROWS = Counter(
    "model_service_shadow_rows_total",
    "Rows compared between the primary's answer and the shadow candidate's.",
    ["model", "candidate"],
)
SHADOW_AGREED_ROWS = Counter(
    "model_service_shadow_agreed_rows_total",
    "Classifiers: compared rows where the candidate gave the primary's label; agreement "
    "is this over model_service_shadow_rows_total.",
    ["model", "candidate"],
)
SHADOW_SECONDS = Histogram(
    "model_service_shadow_seconds",
    "Time the shadow candidate took to predict a shadowed request.",
    ["model", "candidate"],
    buckets=DURATION_BUCKETS,
)
SHADOW_DIFFERENCE_METRIC = "model_service_shadow_difference"
SHADOW_DIFFERENCE_HELP = (
    "Regressors: candidate minus primary, per compared row; the buckets are symmetric "
    "fractions of the target's range in the primary's test set where the metadata has it."
)
# Of the target's range: a difference of 0.1 % is rounding, 50 % is another model.
DIFFERENCE_FRACTIONS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5)
DEFAULT_DIFFERENCE_RANGE = 100.0
VALUE_METRIC = "model_service_prediction_value"
VALUE_HELP = (
    "Values predicted by regressors, over every protocol; the buckets span the target's "
    "range in the model's test set where the metadata has it."
)
MODEL_INFO = "model_service_model_info"
MODEL_INFO_HELP = (
    "1 for each model version loaded in the process that answered the scrape, with the "
    "scikit-learn version that trained it and the backend that computes its predictions."
)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_DIR_ENV))


@dataclasses.dataclass
class _State:
    enabled: bool = False
    # The app's registry, for model_info (weak: a test's app may go away).
    registry: weakref.ReferenceType | None = None


_state = _State()


# -- predictions -------------------------------------------------------------------


class _ModelMetrics:
    """Label children of one (model, version), made once: observing costs a few dict
    look-ups and prometheus' own increments."""

    def __init__(self, model: LoadedModel):
        self.name = model.name
        self.version = str(model.version)
        self.classification = model.task == "classification"
        self.instances = INSTANCES.labels(self.name)
        self.classes: dict[Any, Any] = {}
        self.values = None
        if not self.classification:
            self.values = _value_histogram(self.name, self.version, value_buckets(model.metadata))

    def class_child(self, label: Any):
        child = self.classes.get(label)
        if child is None:
            child = self.classes[label] = PREDICTIONS.labels(self.name, self.version, str(label))
        return child


_models: dict[tuple[str, int], _ModelMetrics] = {}
# (model, version) -> an unregistered Histogram: each regressor has buckets of its own,
# so it cannot share one registered Histogram; in one process _ValueCollector exposes
# them as one family, in multiprocess mode their files merge by name.
_value_histograms: dict[tuple[str, str], Histogram] = {}


def _value_histogram(name: str, version: str, buckets: tuple[float, ...]):
    histogram = _value_histograms.get((name, version))
    if histogram is None:
        histogram = _value_histograms[(name, version)] = Histogram(
            VALUE_METRIC, VALUE_HELP, ["model", "version"], buckets=buckets, registry=None
        )
    return histogram.labels(name, version)


def value_buckets(metadata: dict[str, Any]) -> tuple[float, ...]:
    """Buckets over the test set's actual target values (scores.test.points), else defaults."""
    try:
        actual = metadata["scores"]["test"]["points"]["actual"]
        values = np.asarray(actual, dtype=np.float64)
        values = values[np.isfinite(values)]
        low, high = float(values.min()), float(values.max())
    except (KeyError, TypeError, ValueError):
        return DEFAULT_VALUE_BUCKETS
    if not high > low:
        return DEFAULT_VALUE_BUCKETS
    bounds = sorted({float(f"{b:.4g}") for b in np.linspace(low, high, VALUE_BUCKET_COUNT + 1)})
    return tuple(bounds)


def _observe_values(child, values: list[Any]) -> None:
    """Histogram.observe for a whole batch: one increment per bucket, not per value."""
    buckets = getattr(child, "_buckets", None)
    upper = getattr(child, "_upper_bounds", None)
    if buckets is None or upper is None or len(values) <= SMALL_BATCH:
        for value in values:
            child.observe(float(value))
        return
    array = np.asarray(values, dtype=np.float64)
    # Histogram.observe puts a value in the first bucket whose bound is >= it.
    counts = np.bincount(np.searchsorted(upper, array, side="left"), minlength=len(upper))
    child._sum.inc(float(array.sum()))
    for index in np.flatnonzero(counts):
        buckets[index].inc(float(counts[index]))


def observe_prediction(event: hooks.PredictionEvent) -> None:
    model = event.model
    metrics = _models.get((model.name, model.version))
    if metrics is None:
        metrics = _models[(model.name, model.version)] = _ModelMetrics(model)
    predictions = event.prediction.predictions
    metrics.instances.observe(len(predictions))
    if not predictions:
        return
    if metrics.classification:
        if len(predictions) == 1:  # most requests: no Counter to build
            metrics.class_child(predictions[0]).inc()
            return
        for label, count in collections.Counter(predictions).items():
            metrics.class_child(label).inc(count)
    elif metrics.values is not None:
        _observe_values(metrics.values, predictions)


def observe_load(model: LoadedModel, seconds: float) -> None:
    MODEL_LOAD.labels(model.name, str(model.version)).observe(seconds)


def observe_signature_refusal(name: str, version: int, reason: str) -> None:
    SIGNATURE_REFUSALS.labels(name, str(version), reason).inc()


# -- shadow runs (service.runtime.shadow listeners, in the shadow thread) ------------

_shadow_children: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}
# (model, candidate) -> an unregistered Histogram, like _value_histograms: buckets of its own.
_difference_histograms: dict[tuple[str, str], Histogram] = {}


def difference_buckets(metadata: dict[str, Any]) -> tuple[float, ...]:
    """0 and plus or minus DIFFERENCE_FRACTIONS of the test set's target range."""
    buckets = value_buckets(metadata)
    width = buckets[-1] - buckets[0] if buckets != DEFAULT_VALUE_BUCKETS else 0.0
    if not width > 0:
        width = DEFAULT_DIFFERENCE_RANGE
    bounds = {float(f"{width * f:.4g}") for f in DIFFERENCE_FRACTIONS}
    return tuple(sorted({0.0, *bounds, *(-b for b in bounds)}))


def _difference_child(name: str, candidate: str, metadata: dict[str, Any]):
    histogram = _difference_histograms.get((name, candidate))
    if histogram is None:
        histogram = _difference_histograms[(name, candidate)] = Histogram(
            SHADOW_DIFFERENCE_METRIC,
            SHADOW_DIFFERENCE_HELP,
            ["model", "candidate"],
            buckets=difference_buckets(metadata),
            registry=None,
        )
    return histogram.labels(name, candidate)


def observe_shadow(outcome: Any) -> None:
    """One shadow run (a service.runtime.shadow.ShadowOutcome)."""
    key = (outcome.model, outcome.candidate)
    children = _shadow_children.get(key)
    if children is None:
        children = _shadow_children[key] = (
            SHADOW_RUNS.labels(*key),
            SHADOW_ROWS.labels(*key),
            SHADOW_AGREED_ROWS.labels(*key),
            SHADOW_SECONDS.labels(*key),
        )
    runs, rows, agreed, seconds = children
    runs.inc()
    if outcome.seconds:
        seconds.observe(outcome.seconds)
    if outcome.error is not None:
        SHADOW_ERRORS.labels(*key, outcome.error).inc()
        return
    rows.inc(outcome.rows)
    if outcome.differences is not None:
        child = _difference_child(*key, outcome.primary.metadata)
        _observe_values(child, outcome.differences)
    else:
        agreed.inc(outcome.agreed)


def observe_shadow_drop(work: Any) -> None:
    """Shadow work dropped (a service.runtime.shadow.ShadowWork), in the request: O(1)."""
    SHADOW_DROPPED.labels(work.model, work.candidate).inc()


# -- requests (called by service.api.observe) --------------------------------------

_request_counters: dict[tuple[str, str, str, int], Any] = {}
_request_durations: dict[tuple[str, str], Any] = {}
_failures: dict[tuple[str, str], Any] = {}


def observe_request(route: str, model: str, version: str, status: int, seconds: float) -> None:
    counter = _request_counters.get((route, model, version, status))
    if counter is None:
        counter = _request_counters[(route, model, version, status)] = REQUESTS.labels(
            route, model, version, str(status)
        )
    counter.inc()
    duration = _request_durations.get((route, model))
    if duration is None:
        duration = _request_durations[(route, model)] = REQUEST_DURATION.labels(route, model)
    duration.observe(seconds)


def observe_validation_failure(model: str, reason: str) -> None:
    counter = _failures.get((model, reason))
    if counter is None:
        counter = _failures[(model, reason)] = VALIDATION_FAILURES.labels(model, reason)
    counter.inc()


def worker_started() -> None:
    """Gunicorn's post_fork, in the new worker."""
    if _state.enabled:
        WORKER_STARTS.inc()


# -- turning it on -------------------------------------------------------------------


def enabled() -> bool:
    return _state.enabled


def init_process(settings: Settings, registry: ModelRegistry | None = None) -> bool:
    """Count this process's predictions (and its registry's loads) when metrics are on;
    take the observers away when they are off. Returns whether metrics are on."""
    _state.enabled = settings.metrics
    if not settings.metrics:
        hooks.remove_observer(observe_prediction)
        if observe_shadow in shadow.outcome_listeners:
            shadow.outcome_listeners.remove(observe_shadow)
        if observe_shadow_drop in shadow.drop_listeners:
            shadow.drop_listeners.remove(observe_shadow_drop)
        if observe_signature_refusal in signing.refusal_listeners:
            signing.refusal_listeners.remove(observe_signature_refusal)
        _state.registry = None
        if registry is not None and observe_load in registry.load_listeners:
            registry.load_listeners.remove(observe_load)
        return False
    hooks.add_observer(observe_prediction)
    if observe_shadow not in shadow.outcome_listeners:
        shadow.outcome_listeners.append(observe_shadow)
    if observe_shadow_drop not in shadow.drop_listeners:
        shadow.drop_listeners.append(observe_shadow_drop)
    if observe_signature_refusal not in signing.refusal_listeners:
        signing.refusal_listeners.append(observe_signature_refusal)
    if registry is not None:
        _state.registry = weakref.ref(registry)
        if observe_load not in registry.load_listeners:
            registry.load_listeners.append(observe_load)
    return True


# -- scraping --------------------------------------------------------------------------


class _FunctionCollector(Collector):
    """The figures of service.monitoring.SCRAPE_COLLECTORS, computed now; one that fails
    is logged and left out, never failing the scrape."""

    def collect(self) -> Iterable[Metric]:
        for collector in tuple(monitoring.SCRAPE_COLLECTORS):
            try:
                families = list(collector())
            except Exception:
                log.exception("scrape collector %r failed; its figures are left out", collector)
                continue
            yield from families


class _ModelInfoCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            MODEL_INFO, MODEL_INFO_HELP, labels=["model", "version", "sklearn_version", "backend"]
        )
        registry = _state.registry() if _state.registry is not None else None
        if registry is not None:
            seen = set()
            for model in registry.loaded():
                labels = model_info_labels(model)
                if labels not in seen:
                    seen.add(labels)
                    family.add_metric(list(labels), 1.0)
        yield family


def model_info_labels(model: LoadedModel) -> tuple[str, str, str, str]:
    environment = model.metadata.get("environment") or {}
    backend = getattr(model, "backend", None)
    backend_name = "sklearn" if backend is None else str(getattr(backend, "name", backend))
    return (model.name, str(model.version), str(environment.get("scikit-learn", "")), backend_name)


class _ValueCollector(Collector):
    """One process: the histograms with buckets of their own per model (regressors'
    values, shadow differences), each name as one family."""

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        histograms = [*_value_histograms.values(), *_difference_histograms.values()]
        for histogram in histograms:
            for family in histogram.collect():
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()


_EXTRA = (_ModelInfoCollector(), _FunctionCollector())


def scrape(*, computed: bool = True) -> list[Metric]:
    """Every metric family, as /metrics shows it (both modes); empty when metrics are off.

    ``computed=False`` leaves out the figures computed at scrape time (model info, live
    quality, drift): for readers that only want what the processes counted."""
    if not _state.enabled:
        return []
    if multiprocess():
        # A fresh collector each time, reading every process's files (prometheus docs).
        base = prometheus_multiprocess.MultiProcessCollector(None).collect()
        families = list(base)
    else:
        families = list(REGISTRY.collect())
        families.extend(_ValueCollector().collect())
    if computed:
        for collector in _EXTRA:
            families.extend(collector.collect())
    return families


class ScrapeRegistry:
    """What prometheus_client's encoders take: an object with collect()."""

    def collect(self) -> Iterable[Metric]:
        return scrape()
