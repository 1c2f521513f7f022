"""What each process does with the predictions it serves: record them for feedback,
drift and the prediction log, off the request path.

The observer registered with ``service.runtime.hooks`` only appends the event to an
in-process buffer. A daemon thread, started lazily in each process that serves (like
the registry's watcher: threads do not survive Gunicorn's fork), wakes every
``FLUSH_INTERVAL`` seconds and writes the buffered events in one batch: the served
rows to the shared SQLite state, the drift counts, and the sampled lines of the
prediction log. The read endpoints and the scrape collectors flush their own
process's buffer before they answer, and the buffer is flushed at exit.

A prediction served by another worker reaches the state within ``FLUSH_INTERVAL``;
feedback that arrives before that waits up to ``FEEDBACK_WAIT`` seconds for it before
answering 404.

Each app has its own monitor, in its Monitoring (``service.monitoring.hub``), observing
its own registry's predictions. A front end that builds no app (the gRPC server, a
process of its own) installs one for its process with :func:`install`.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from service.config import Settings
from service.errors import InvalidInput, NotFound, ServiceError
from service.monitoring import drift, quality
from service.monitoring.flusher import BufferedWriter
from service.monitoring.predlog import PredictionLog, lines_for
from service.monitoring.state import StateStore
from service.runtime import hooks
from service.store import ModelStore

if TYPE_CHECKING:
    from service.runtime.model import LoadedModel, Prediction

log = logging.getLogger(__name__)

# Each flush is one SQLite transaction (a commit, now and then a WAL checkpoint): twice a
# second keeps that off the single-row rate and still joins feedback promptly.
FLUSH_INTERVAL = 0.5
# Events (requests) held per process while the state cannot be written; beyond, the
# oldest are dropped (and counted) rather than letting memory grow.
MAX_BUFFERED = 100_000
FEEDBACK_WAIT = 1.0
# Labels one feedback request may carry (POST /v1/models/<name>/feedback).
MAX_FEEDBACK_ITEMS = 10_000
_POLL = 0.05


class UnknownPrediction(NotFound):
    code = "prediction_not_found"


class InvalidLabel(InvalidInput):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "invalid_label"


class _Served(NamedTuple):
    """What the writer needs of one served prediction, held until the next flush. Only
    what it needs: every container held here is one more object for the garbage
    collector to walk while it waits (probabilities are kept for the prediction log)."""

    seconds: float
    model: LoadedModel
    model_input: Any
    predictions: list[Any]
    request_id: str | None
    prediction: Prediction | None  # the whole prediction, for the prediction log only


class Monitor(BufferedWriter):
    def __init__(self, settings: Settings, store: ModelStore | None = None):
        self.settings = settings
        self.store = store or ModelStore(settings.store)
        self.state = StateStore(
            settings.state_dir, prediction_retention=settings.prediction_retention
        )
        self.predlog = (
            PredictionLog(
                settings.state_dir,
                max_bytes=settings.prediction_log_max_bytes,
                backups=settings.prediction_log_backups,
            )
            if settings.prediction_log
            else None
        )
        self._init_buffer(FLUSH_INTERVAL, "monitoring-flusher", MAX_BUFFERED)
        self._random = random.Random()
        self._binners: dict[tuple[str, int], drift.Binner] = {}
        self._metadata: dict[tuple[str, int], dict[str, Any]] = {}
        self._pruned_minute: int | None = None

    # -- the request path -------------------------------------------------------

    def observe(self, event: hooks.PredictionEvent) -> None:
        prediction = event.prediction
        self._append(
            _Served(
                time.time(),
                event.model,
                event.model_input,
                prediction.predictions,
                event.request_id,
                prediction if self.predlog is not None else None,
            )
        )

    # -- the writer ---------------------------------------------------------------

    def flush(self) -> int:
        """Write what this process buffered; returns the events written. Never raises."""
        with self._flush_lock:
            events = self._take_buffered()
            if not events:
                return 0
            try:
                self._write(events)
            except Exception:
                log.exception(
                    "monitoring: %d served predictions could not be recorded", len(events)
                )
                return 0
            return len(events)

    def _write(self, events: list[_Served]) -> None:
        served: list[tuple[str, str, int, list[Any], float]] = []
        counts: dict[tuple[str, int, str, str, int], int] = collections.Counter()
        lines: list[dict[str, Any]] = []
        rate = self.settings.prediction_log_sample_rate
        # Inputs of one model version in one minute are binned together: one numpy pass per
        # feature per batch, not per request (single-row traffic makes thousands a second).
        inputs: dict[tuple[LoadedModel, int], list[Any]] = collections.defaultdict(list)
        for event in events:
            model, seconds = event.model, event.seconds
            if event.request_id:
                served.append(
                    (model.name, event.request_id, model.version, event.predictions, seconds)
                )
            inputs[(model, int(seconds // 60))].append(event.model_input)
            if (
                self.predlog is not None
                and event.prediction is not None
                and (rate >= 1 or self._random.random() < rate)
            ):
                lines.extend(
                    lines_for(model, event.model_input, event.prediction, event.request_id, seconds)
                )
        for (model, minute), model_inputs in inputs.items():
            binner = self._binner(model.name, model.version, model.metadata)
            for feature, bins in binner.count(model_inputs).items():
                for bin_, n in bins.items():
                    counts[(model.name, model.version, feature, bin_, minute)] += n
        now_minute = int(time.time() // 60)
        prune = None
        if self._pruned_minute != now_minute:
            prune = now_minute - self.settings.drift_window_minutes - 1
            self._pruned_minute = now_minute
        self.state.write_batch(served, counts, prune_drift_before=prune)
        if lines and self.predlog is not None:
            self.predlog.write(lines)

    def _feature_profiles(
        self, name: str, version: int, metadata: dict[str, Any]
    ) -> list[drift.FeatureProfile]:
        return self._binner(name, version, metadata).profiles

    def _binner(self, name: str, version: int, metadata: dict[str, Any]) -> drift.Binner:
        key = (name, version)
        found = self._binners.get(key)
        if found is None:
            found = self._binners[key] = drift.Binner(drift.profiles(metadata))
        return found

    # -- metadata of versions no longer loaded ------------------------------------

    def metadata(self, name: str, version: int) -> dict[str, Any] | None:
        key = (name, version)
        if key not in self._metadata:
            try:
                self._metadata[key] = self.store.metadata(name, version)
            except ServiceError:
                return None
        return self._metadata[key]

    def _aliases_by_version(self, name: str) -> dict[int, list[str]]:
        try:
            aliases = self.store.aliases(name)
        except ServiceError:
            return {}
        found: dict[int, list[str]] = {}
        for alias, version in sorted(aliases.items()):
            found.setdefault(int(version), []).append(alias)
        return found

    # -- feedback -------------------------------------------------------------------

    def record_feedback(self, name: str, items: list[tuple[str, int, Any]]) -> list[dict[str, Any]]:
        """Join labels (request_id, index, label) to served predictions and store them.
        All or nothing: an unknown prediction (404) or a bad label (422) stores none."""
        self.flush()
        keys = [(request_id, index) for request_id, index, _ in items]
        served = self.state.served(name, keys)
        deadline = time.monotonic() + FEEDBACK_WAIT
        # Served by another worker a moment ago: its batch is at most FLUSH_INTERVAL away.
        while len(served) < len(set(keys)) and time.monotonic() < deadline:
            time.sleep(_POLL)
            served.update(self.state.served(name, [k for k in keys if k not in served]))
        unknown = [
            {"item": i, "request_id": r, "index": x}
            for i, (r, x) in enumerate(keys)
            if (r, x) not in served
        ]
        if unknown:
            first = unknown[0]
            raise UnknownPrediction(
                f"item {first['item']}: no prediction of {name!r} with request id "
                f"{first['request_id']!r} and index {first['index']} is kept: unknown, or "
                f"older than the last {self.settings.prediction_retention} predictions",
                details=unknown,
            )
        problems = []
        joined = []
        for i, (request_id, index, label) in enumerate(items):
            version, prediction = served[(request_id, index)]
            metadata = self.metadata(name, version) or {}
            checked, problem = _check_label(metadata, label)
            if problem:
                problems.append({"item": i, "version": version, "problem": problem})
            joined.append((request_id, index, version, prediction, checked))
        if problems:
            first = problems[0]
            raise InvalidLabel(
                f"item {first['item']}: {first['problem']}",
                details=problems,
                code="invalid_label",
            )
        replaced = self.state.record_feedback(name, joined)
        return [
            {
                "request_id": request_id,
                "index": index,
                "version": version,
                "prediction": prediction,
                "label": label,
                "replaced": again,
            }
            for (request_id, index, version, prediction, label), again in zip(
                joined, replaced, strict=True
            )
        ]

    # -- reports --------------------------------------------------------------------

    def performance(self, name: str) -> dict[str, Any]:
        self.flush()
        totals = self.state.feedback_totals(name)
        aliases = self._aliases_by_version(name)
        versions = sorted(
            {v for _, v in totals}
            | {v for _, v in self.state.predicted_versions(name)}
            | set(aliases)
        )
        reports = []
        for version in versions:
            metadata = self.metadata(name, version)
            if metadata is None:
                continue
            report = quality.version_report(
                metadata,
                self.state.labelled(name, version, self.settings.quality_window),
                feedback_total=totals.get((name, version), 0),
                window=self.settings.quality_window,
                tolerance=self.settings.quality_tolerance,
            )
            report["aliases"] = aliases.get(version, [])
            reports.append(report)
        return {
            "model": name,
            "window": self.settings.quality_window,
            "tolerance": self.settings.quality_tolerance,
            "versions": reports,
        }

    def drift(self, name: str) -> dict[str, Any]:
        self.flush()
        window = self.settings.drift_window_minutes
        since = int(time.time() // 60) - window + 1
        live = self.state.drift_counts(since, name)
        aliases = self._aliases_by_version(name)
        reports = []
        for version in sorted({v for _, v in live} | set(aliases)):
            metadata = self.metadata(name, version)
            if metadata is None:
                continue
            reports.append(
                {
                    "version": version,
                    "aliases": aliases.get(version, []),
                    **self._version_drift(name, version, metadata, live.get((name, version), {})),
                }
            )
        return {
            "model": name,
            "window_minutes": window,
            "threshold": self.settings.drift_threshold,
            "alpha": self.settings.drift_alpha,
            "min_rows": self.settings.drift_min_rows,
            "epsilon": drift.EPSILON,
            "versions": reports,
        }

    def _version_drift(
        self, name: str, version: int, metadata: dict[str, Any], counts: dict[str, dict[str, int]]
    ) -> dict[str, Any]:
        return drift.version_report(
            self._feature_profiles(name, version, metadata),
            counts,
            threshold=self.settings.drift_threshold,
            alpha=self.settings.drift_alpha,
            min_rows=self.settings.drift_min_rows,
        )

    # -- Prometheus, at scrape time ---------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        try:
            return self._collect_quality() + self._collect_drift()
        except Exception:
            log.exception("monitoring: live quality and drift figures could not be read")
            return []

    def _collect_quality(self) -> list[Metric]:
        self.flush()
        labels = ["model", "version"]
        accuracy = GaugeMetricFamily(
            "model_service_live_accuracy",
            "Accuracy over the newest labelled predictions (quality_window)",
            labels=labels,
        )
        recall = GaugeMetricFamily(
            "model_service_live_class_recall",
            "Recall of each class over the newest labelled predictions",
            labels=[*labels, "class"],
        )
        mae = GaugeMetricFamily(
            "model_service_live_mae",
            "Mean absolute error over the newest labelled predictions",
            labels=labels,
        )
        total = CounterMetricFamily(
            "model_service_feedback", "Labels received for served predictions", labels=labels
        )
        below = GaugeMetricFamily(
            "model_service_live_quality_below_test",
            "1 when live quality is worse than the test score by more than the tolerance",
            labels=labels,
        )
        for (name, version), count in sorted(self.state.feedback_totals().items()):
            metadata = self.metadata(name, version)
            if metadata is None:
                continue
            key = [name, str(version)]
            total.add_metric(key, count)
            report = quality.version_report(
                metadata,
                self.state.labelled(name, version, self.settings.quality_window),
                feedback_total=count,
                window=self.settings.quality_window,
                tolerance=self.settings.quality_tolerance,
            )
            live = report["live"]
            if live.get(quality.ACCURACY) is not None:
                accuracy.add_metric(key, live[quality.ACCURACY])
                for cls, value in live["class_recall"].items():
                    if value is not None:
                        recall.add_metric([*key, cls], value)
            if live.get(quality.MAE) is not None:
                mae.add_metric(key, live[quality.MAE])
            below.add_metric(key, 1.0 if report["below_test_score"] else 0.0)
        return [accuracy, recall, mae, total, below]

    def _collect_drift(self) -> list[Metric]:
        labels = ["model", "version", "feature"]
        psi = GaugeMetricFamily(
            "model_service_feature_drift_psi",
            "Population stability index of live feature values against training, once the "
            "feature has drift_min_rows values",
            labels=labels,
        )
        p_value = GaugeMetricFamily(
            "model_service_feature_drift_p_value",
            "Chi-square p-value of live bin counts against the training shares, once the "
            "feature has drift_min_rows values",
            labels=labels,
        )
        flagged = GaugeMetricFamily(
            "model_service_feature_drift_flagged",
            "1 when the feature has drift_min_rows values, its PSI is above drift_threshold "
            "and its p-value below drift_alpha / the model's feature count",
            labels=labels,
        )
        too_few = GaugeMetricFamily(
            "model_service_feature_drift_too_few_rows",
            "1 while the feature has fewer than drift_min_rows values: not judged yet",
            labels=labels,
        )
        since = int(time.time() // 60) - self.settings.drift_window_minutes + 1
        for (name, version), counts in sorted(self.state.drift_counts(since).items()):
            metadata = self.metadata(name, version)
            if metadata is None:
                continue
            report = self._version_drift(name, version, metadata, counts)
            for feature, entry in report["features"].items():
                if not entry["count"]:
                    continue
                key = [name, str(version), feature]
                # Below the minimum the report has no PSI (it would be noise), so none is
                # exported: no dashboard or alert can read it as a figure.
                if entry["psi"] is not None:
                    psi.add_metric(key, entry["psi"])
                if entry["p_value"] is not None:
                    p_value.add_metric(key, entry["p_value"])
                flagged.add_metric(key, 1.0 if entry["flagged"] else 0.0)
                too_few.add_metric(key, 1.0 if entry["status"] == drift.TOO_FEW_ROWS else 0.0)
        return [psi, p_value, flagged, too_few]


def _check_label(metadata: dict[str, Any], label: Any) -> tuple[Any, str | None]:
    """The label as the model's class (or a float for a regressor), or a problem."""
    if metadata.get("task") == "regression":
        if isinstance(label, bool) or not isinstance(label, int | float) or label != label:
            return label, f"label must be a number for a regressor, got {label!r}"
        if abs(float(label)) == float("inf"):
            return label, "label must be a finite number"
        return float(label), None
    classes = list(metadata.get("classes") or [])
    if not isinstance(label, bool) and isinstance(label, str | int | float):
        for cls in classes:
            if isinstance(cls, bool) or isinstance(label, str) != isinstance(cls, str):
                if isinstance(cls, str) and isinstance(label, int) and str(label) == cls:
                    return cls, None
                continue
            if label == cls:
                return cls, None
    return label, f"label {label!r} is not one of the classes {classes}"


# -- a front end that builds no app (the gRPC server): one monitor per process ---------

_active: Monitor | None = None


def _observe(event: hooks.PredictionEvent) -> None:
    monitor = _active
    if monitor is not None:
        monitor.observe(event)


def install(settings: Settings, store: ModelStore | None = None) -> Monitor:
    """Observe every prediction of this process with a new monitor (replacing any earlier
    one). An app does not call this: its Monitoring has a monitor of its own."""
    global _active
    previous, _active = _active, Monitor(settings, store)
    if previous is not None:
        previous.stop()
    hooks.add_observer(_observe)
    return _active


def active() -> Monitor | None:
    """The monitor :func:`install` put in place in this process, if any."""
    return _active
