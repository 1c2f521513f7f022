"""Everything one app monitors with, in one object its factory builds.

Two apps in one process (tests, an embedding program) each have their own: the observers
added to their own model registry, their own Prometheus metrics, their own live monitor
(feedback joins, drift counts, the prediction log), experiment and shadow recorders, and
the figures their /metrics computes at scrape time. Nothing here is module-global; what
truly is per process stays with the process and says why (Gunicorn's multiprocess metric
files, the shadow runner and its candidate process, the gRPC server's own monitoring).

Nothing here imports Flask.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.metrics_core import Metric

from service.monitoring import ScrapeCollector, experiments, live, shadow_record
from service.monitoring.metrics import Metrics
from service.monitoring.state import StateStore
from service.runtime import shadow

if TYPE_CHECKING:
    from service.config import Settings
    from service.runtime.registry import ModelRegistry
    from service.store import ModelStore

T = TypeVar("T")


class Monitoring:
    """The monitoring of one app, over the predictions of its model registry."""

    def __init__(
        self, settings: Settings, registry: ModelRegistry, store: ModelStore | None = None
    ):
        self.settings = settings
        self.registry = registry
        # None when the ``metrics`` setting is off: nothing counted, /metrics answers 404.
        self.metrics = Metrics() if settings.metrics else None
        self.experiment_metrics = (
            experiments.ExperimentMetrics(self.metrics.registry) if self.metrics else None
        )
        self.live = live.Monitor(settings, store or registry.store)
        self.experiments = experiments.ExperimentRecorder(
            StateStore(settings.state_dir, prediction_retention=settings.prediction_retention)
        )
        self.shadow = shadow_record.ShadowRecorder(settings)
        # Figures computed at scrape time, after what the processes counted.
        self.collectors: list[ScrapeCollector] = [self.live.collect, self._experiment_quality]
        if self.metrics is not None:
            self.metrics.attach(registry)
        registry.observers.add(self.live.observe)
        # runtime.shadow tells the listeners of the whole process (its runner is one per
        # process); each app keeps the runs of its own registry's models. Weakly: an app
        # that goes away takes its monitoring with it.
        self._shadow_listeners = (
            _weakly(self._shadow_outcome, shadow.outcome_listeners),
            _weakly(self._shadow_drop, shadow.drop_listeners),
        )

    # -- what the front ends call ----------------------------------------------------

    def record_experiment(
        self, model: str, request_id: str | None, failure: bool | None, seconds: float
    ) -> None:
        """The answer to the current request, when it was served inside an experiment
        (``experiments.failed`` gives ``failure``; None: a client's mistake)."""
        experiments.record_to(
            self.experiments, self.experiment_metrics, model, request_id, failure, seconds
        )

    def observed_call(self, model: str, request_id: str | None, call: Callable[[], T]) -> T:
        """``experiments.observed_call`` recorded here: for front ends that see the
        exception itself (gRPC), not an HTTP status."""
        return experiments.observed_call(model, request_id, call, record=self.record_experiment)

    def scrape(self, *, computed: bool = True) -> list[Metric]:
        """Every metric family /metrics shows; empty when metrics are off."""
        if self.metrics is None:
            return []
        self._collect_shadow()
        return self.metrics.scrape(self.collectors, computed=computed)

    def add_collector(self, collector: ScrapeCollector) -> None:
        if collector not in self.collectors:
            self.collectors.append(collector)

    def shadow_totals(self, name: str, experiment: str | None = None) -> list[dict[str, Any]]:
        """This host's shadow sums for a model, with what this app counted flushed first."""
        self._collect_shadow()
        return shadow_record.totals(self.settings, name, experiment, recorder=self.shadow)

    def _collect_shadow(self) -> None:
        # A worker reads its candidate process's answers as its requests pass: a reader of
        # the figures also takes those that arrived since (an idle worker's last ones).
        runner = shadow.active()
        if runner is not None and runner.registry is self.registry:
            runner.collect()

    def stop(self) -> None:
        """Write what is buffered and stop the writers' timers (tests, benchmarks)."""
        for listener in self._shadow_listeners:
            listener.detach()
        self.registry.observers.remove(self.live.observe)
        if self.metrics is not None:
            self.registry.observers.remove(self.metrics.observe_prediction)
        self.live.stop()
        self.experiments.stop()
        self.shadow.stop()

    # -- scrape time and shadow runs -------------------------------------------------------

    def _experiment_quality(self):
        return experiments.quality(self.live, self.experiments)

    def _mine(self, model: Any) -> bool:
        return model.observers is self.registry.observers

    def _shadow_outcome(self, outcome: shadow.ShadowOutcome) -> None:
        if self._mine(outcome.primary):
            if self.metrics is not None:
                self.metrics.observe_shadow(outcome)
            self.shadow.record(outcome)

    def _shadow_drop(self, work: shadow.ShadowWork) -> None:
        if self._mine(work.primary):
            if self.metrics is not None:
                self.metrics.observe_shadow_drop(work)
            self.shadow.drop(work)


class _weakly:
    """A listener in a process-wide list that calls a method while its object lives, and
    takes itself out of the list once the object is gone."""

    def __init__(self, method: Callable[[Any], None], listeners: list[Any]):
        self._method = weakref.WeakMethod(method)
        self._listeners = listeners
        listeners.append(self)

    def __call__(self, item: Any) -> None:
        method = self._method()
        if method is None:
            self.detach()
            return
        method(item)

    def detach(self) -> None:
        if self in self._listeners:
            self._listeners.remove(self)
