"""Prometheus metrics: what was asked, what was served, what was loaded.

Under Gunicorn (``PROMETHEUS_MULTIPROC_DIR`` set by the start script before any process
imports prometheus_client) every process writes its samples to files in that directory
and a scrape merges them: counters and histograms of a dead worker stay in the sums, so
a killed worker's counts are neither lost nor counted twice. Without the variable (tests,
an embedding program) the metrics live in the app's own registry.

Each app has a :class:`Metrics` of its own (built by ``service.monitoring.hub`` when the
``metrics`` setting is on): the metric objects, in a registry of their own, so two apps in
one process (tests, an embedding program) count apart. Prediction metrics come from an
observer of the app's model registry, so the native, v2, MLflow and gRPC front ends count
alike; request metrics come from the Flask hooks in ``service.api.observe``. Under
Gunicorn the samples are the process's files all the same: one app per process there.

``model_service_model_info`` is computed at scrape time from the models loaded in the
process answering the scrape. A gauge written at load time would be stale in every
multiprocess mode: under ``preload_app`` the Gunicorn master loads the models once and
never unloads them, so "max" would keep every version any process ever loaded, and
"liveall" would keep the master's start-up set (and add a pid label to every series).
"""

from __future__ import annotations

import collections
import logging
import os
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from service.runtime import shadow

if TYPE_CHECKING:
    from service.config import Settings
    from service.monitoring import ScrapeCollector
    from service.runtime import hooks
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

# Per process, not per app: Gunicorn's post_fork counts a worker's start in the new
# worker, where no app is built (the app was built in the master, before the fork); the
# count lands in that process's own multiprocess file, which every scrape reads.
WORKER_STARTS = Counter(
    "model_service_worker_starts_total",
    "Gunicorn workers started since the service started (each post_fork); restarts are "
    "this minus the configured worker count.",
    registry=None,
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
    """Whether every process writes its samples to files in PROMETHEUS_MULTIPROC_DIR: set
    by the start script for the whole process tree, so it is a fact of the process."""
    return bool(os.environ.get(MULTIPROC_DIR_ENV))


def worker_started() -> None:
    """Gunicorn's post_fork, in the new worker."""
    WORKER_STARTS.inc()


class _ModelMetrics:
    """Label children of one (model, version), made once: observing costs a few dict
    look-ups and prometheus' own increments."""

    def __init__(self, metrics: Metrics, model: LoadedModel):
        self.name = model.name
        self.version = str(model.version)
        self.classification = model.task == "classification"
        self.instances = metrics.instances.labels(self.name)
        self.predictions = metrics.predictions
        self.classes: dict[Any, Any] = {}
        self.values = None
        if not self.classification:
            self.values = metrics.value_histogram(
                self.name, self.version, value_buckets(model.metadata)
            )

    def class_child(self, label: Any):
        child = self.classes.get(label)
        if child is None:
            child = self.classes[label] = self.predictions.labels(
                self.name, self.version, str(label)
            )
        return child


class Metrics:
    """The Prometheus metrics of one app (or of the gRPC server's process)."""

    def __init__(self) -> None:
        # The app's own: without PROMETHEUS_MULTIPROC_DIR a scrape reads it, and another
        # app's counts are not in it. With the variable set every metric object writes
        # the process's files, and a scrape reads the files of every process instead.
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "model_service_requests_total",
            "HTTP requests answered, by route (the URL rule), model, version and status; model and "
            "version are empty when the request named no served model or nothing was predicted.",
            ["route", "model", "version", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "model_service_request_duration_seconds",
            "Time from the app receiving an HTTP request to its response being ready.",
            ["route", "model"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.instances = Histogram(
            "model_service_instances_per_request",
            "Instances (rows) in each served prediction, over every protocol.",
            ["model"],
            buckets=INSTANCE_BUCKETS,
            registry=registry,
        )
        self.validation_failures = Counter(
            "model_service_validation_failures_total",
            "Requests refused for their body (400, 413, 415, 422), by error code; invalid_input "
            "carries the kind of the first problem, e.g. invalid_input:unknown_category.",
            ["model", "reason"],
            registry=registry,
        )
        self.model_load = Histogram(
            "model_service_model_load_seconds",
            "Time to load a model version (verify, unpickle, check, replay the golden example), "
            "one observation per load in any process.",
            ["model", "version"],
            buckets=LOAD_BUCKETS,
            registry=registry,
        )
        self.signature_refusals = Counter(
            "model_service_signature_refusals_total",
            "Versions refused before unpickling because their signature did not verify against a "
            "trusted key (trusted_signing_keys), by reason: unsigned, untrusted_key, mismatch (a "
            "file changed after signing), invalid; one per attempt to load, in any process.",
            ["model", "version", "reason"],
            registry=registry,
        )
        self.predictions = Counter(
            "model_service_predictions_total",
            "Predicted labels served by classifiers, by class, over every protocol.",
            ["model", "version", "class"],
            registry=registry,
        )
        self.shadow_runs = Counter(
            "model_service_shadow_runs_total",
            "Requests run again on an experiment's shadow candidate after the primary answered "
            "(service.runtime.shadow), failed ones included; candidate is the target the "
            "experiment names (a version or an alias).",
            ["model", "candidate"],
            registry=registry,
        )
        self.shadow_dropped = Counter(
            "model_service_shadow_dropped_total",
            "Shadow work dropped because too much was out to the worker's candidate process "
            "(it is slower than the shadowed traffic), or lost with a process stopped at its "
            "timeout.",
            ["model", "candidate"],
            registry=registry,
        )
        self.shadow_errors = Counter(
            "model_service_shadow_errors_total",
            "Shadow runs the candidate failed, by kind: unavailable, incompatible, exception, "
            "non_finite, timeout.",
            ["model", "candidate", "kind"],
            registry=registry,
        )
        self.shadow_rows = Counter(
            "model_service_shadow_rows_total",
            "Rows compared between the primary's answer and the shadow candidate's.",
            ["model", "candidate"],
            registry=registry,
        )
        self.shadow_agreed_rows = Counter(
            "model_service_shadow_agreed_rows_total",
            "Classifiers: compared rows where the candidate gave the primary's label; agreement "
            "is this over model_service_shadow_rows_total.",
            ["model", "candidate"],
            registry=registry,
        )
        self.shadow_seconds = Histogram(
            "model_service_shadow_seconds",
            "Time the shadow candidate took to predict a shadowed request.",
            ["model", "candidate"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._models: dict[tuple[str, int], _ModelMetrics] = {}
        # (model, version) -> an unregistered Histogram: each regressor has buckets of its
        # own, so it cannot share one registered Histogram; in one process _ValueCollector
        # exposes them as one family, in multiprocess mode their files merge by name.
        self._value_histograms: dict[tuple[str, str], Histogram] = {}
        self._shadow_children: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}
        # (model, candidate) -> an unregistered Histogram, like _value_histograms.
        self._difference_histograms: dict[tuple[str, str], Histogram] = {}
        self._request_counters: dict[tuple[str, str, str, int], Any] = {}
        self._request_durations: dict[tuple[str, str], Any] = {}
        self._failures: dict[tuple[str, str], Any] = {}
        # The model registry whose loaded models model_info shows (weak: a test's app
        # may go away while the metrics object is still referenced).
        self._model_registry: weakref.ReferenceType[ModelRegistry] | None = None

    def attach(self, model_registry: ModelRegistry) -> None:
        """Count the predictions, loads and signature refusals of this registry's models."""
        self._model_registry = weakref.ref(model_registry)
        model_registry.observers.add(self.observe_prediction)
        if self.observe_load not in model_registry.load_listeners:
            model_registry.load_listeners.append(self.observe_load)
        if self.observe_signature_refusal not in model_registry.refusal_listeners:
            model_registry.refusal_listeners.append(self.observe_signature_refusal)

    # -- predictions -------------------------------------------------------------------

    def value_histogram(self, name: str, version: str, buckets: tuple[float, ...]):
        histogram = self._value_histograms.get((name, version))
        if histogram is None:
            histogram = self._value_histograms[(name, version)] = Histogram(
                VALUE_METRIC, VALUE_HELP, ["model", "version"], buckets=buckets, registry=None
            )
        return histogram.labels(name, version)

    def observe_prediction(self, event: hooks.PredictionEvent) -> None:
        model = event.model
        metrics = self._models.get((model.name, model.version))
        if metrics is None:
            metrics = self._models[(model.name, model.version)] = _ModelMetrics(self, model)
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

    def observe_load(self, model: LoadedModel, seconds: float) -> None:
        self.model_load.labels(model.name, str(model.version)).observe(seconds)

    def observe_signature_refusal(self, name: str, version: int, reason: str) -> None:
        self.signature_refusals.labels(name, str(version), reason).inc()

    # -- shadow runs (service.runtime.shadow's outcomes, in the request that reads them) ---------

    def _difference_child(self, name: str, candidate: str, metadata: dict[str, Any]):
        histogram = self._difference_histograms.get((name, candidate))
        if histogram is None:
            histogram = self._difference_histograms[(name, candidate)] = Histogram(
                SHADOW_DIFFERENCE_METRIC,
                SHADOW_DIFFERENCE_HELP,
                ["model", "candidate"],
                buckets=difference_buckets(metadata),
                registry=None,
            )
        return histogram.labels(name, candidate)

    def observe_shadow(self, outcome: Any) -> None:
        """One shadow run (a service.runtime.shadow.ShadowOutcome)."""
        key = (outcome.model, outcome.candidate)
        children = self._shadow_children.get(key)
        if children is None:
            children = self._shadow_children[key] = (
                self.shadow_runs.labels(*key),
                self.shadow_rows.labels(*key),
                self.shadow_agreed_rows.labels(*key),
                self.shadow_seconds.labels(*key),
            )
        runs, rows, agreed, seconds = children
        runs.inc()
        if outcome.seconds:
            seconds.observe(outcome.seconds)
        if outcome.error is not None:
            self.shadow_errors.labels(*key, outcome.error).inc()
            return
        rows.inc(outcome.rows)
        if outcome.differences is not None:
            child = self._difference_child(*key, outcome.primary.metadata)
            _observe_values(child, outcome.differences)
        else:
            agreed.inc(outcome.agreed)

    def observe_shadow_drop(self, work: Any) -> None:
        """Shadow work dropped (a service.runtime.shadow.ShadowWork), in the request: O(1)."""
        self.shadow_dropped.labels(work.model, work.candidate).inc()

    # -- requests (called by service.api.observe) ------------------------------------

    def observe_request(
        self, route: str, model: str, version: str, status: int, seconds: float
    ) -> None:
        key = (route, model, version, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(
                route, model, version, str(status)
            )
        counter.inc()
        duration = self._request_durations.get((route, model))
        if duration is None:
            duration = self._request_durations[(route, model)] = self.request_duration.labels(
                route, model
            )
        duration.observe(seconds)

    def observe_validation_failure(self, model: str, reason: str) -> None:
        counter = self._failures.get((model, reason))
        if counter is None:
            counter = self._failures[(model, reason)] = self.validation_failures.labels(
                model, reason
            )
        counter.inc()

    # -- scraping ------------------------------------------------------------------------

    def scrape(
        self, collectors: Iterable[ScrapeCollector] = (), *, computed: bool = True
    ) -> list[Metric]:
        """Every metric family, as /metrics shows it (both modes), with the figures of
        ``collectors`` computed now (one that fails is logged and left out, never failing
        the scrape).

        ``computed=False`` leaves out the figures computed at scrape time (model info,
        live quality, drift): for readers that only want what the processes counted."""
        if multiprocess():
            # A fresh collector each time, reading every process's files (prometheus docs).
            families = list(prometheus_multiprocess.MultiProcessCollector(None).collect())
        else:
            families = list(self.registry.collect())
            # Facts of the process, not of one app: as the default registry shows them.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR, WORKER_STARTS):
                families.extend(collector.collect())
            families.extend(self._value_families())
        if computed:
            families.append(self._model_info())
            for collector in tuple(collectors):
                try:
                    found = list(collector())
                except Exception:
                    log.exception("scrape collector %r failed; its figures are left out", collector)
                    continue
                families.extend(found)
        return families

    def _value_families(self) -> list[Metric]:
        """One process: the histograms with buckets of their own per model (regressors'
        values, shadow differences), each name as one family."""
        merged: dict[str, Metric] = {}
        histograms = [*self._value_histograms.values(), *self._difference_histograms.values()]
        for histogram in histograms:
            for family in histogram.collect():
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        return list(merged.values())

    def _model_info(self) -> Metric:
        family = GaugeMetricFamily(
            MODEL_INFO, MODEL_INFO_HELP, labels=["model", "version", "sklearn_version", "backend"]
        )
        registry = self._model_registry() if self._model_registry is not None else None
        if registry is not None:
            seen = set()
            for model in registry.loaded():
                labels = model_info_labels(model)
                if labels not in seen:
                    seen.add(labels)
                    family.add_metric(list(labels), 1.0)
        return family


class Exposition:
    """What prometheus_client's encoders take: an object with collect()."""

    def __init__(self, families: Iterable[Metric]):
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


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


def difference_buckets(metadata: dict[str, Any]) -> tuple[float, ...]:
    """0 and plus or minus DIFFERENCE_FRACTIONS of the test set's target range."""
    buckets = value_buckets(metadata)
    width = buckets[-1] - buckets[0] if buckets != DEFAULT_VALUE_BUCKETS else 0.0
    if not width > 0:
        width = DEFAULT_DIFFERENCE_RANGE
    bounds = {float(f"{width * f:.4g}") for f in DIFFERENCE_FRACTIONS}
    return tuple(sorted({0.0, *bounds, *(-b for b in bounds)}))


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


def model_info_labels(model: LoadedModel) -> tuple[str, str, str, str]:
    environment = model.metadata.get("environment") or {}
    backend = getattr(model, "backend", None)
    backend_name = "sklearn" if backend is None else str(getattr(backend, "name", backend))
    return (model.name, str(model.version), str(environment.get("scikit-learn", "")), backend_name)


# -- a front end that builds no app (the gRPC server): its process's metrics ------------
# An app's metrics are its Monitoring's (service.monitoring.hub).

_process: Metrics | None = None


def init_process(settings: Settings, registry: ModelRegistry) -> bool:
    """Count the predictions, loads and shadow runs of this process's registry when the
    ``metrics`` setting is on (in the files of PROMETHEUS_MULTIPROC_DIR, which Gunicorn's
    /metrics reads); returns whether it is on."""
    global _process
    previous, _process = _process, Metrics() if settings.metrics else None
    if previous is not None:
        _listen_to_shadow(previous, listen=False)
    if _process is None:
        return False
    _process.attach(registry)
    _listen_to_shadow(_process, listen=True)
    return True


def process_metrics() -> Metrics | None:
    return _process


def _listen_to_shadow(metrics: Metrics, *, listen: bool) -> None:
    for listeners, listener in (
        (shadow.outcome_listeners, metrics.observe_shadow),
        (shadow.drop_listeners, metrics.observe_shadow_drop),
    ):
        if listen and listener not in listeners:
            listeners.append(listener)
        elif not listen and listener in listeners:
            listeners.remove(listener)
