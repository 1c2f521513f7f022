"""Assemble the Flask application: settings, store, registry, blueprints, error handling."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from service.api import (
    EXTENSION,
    admin,
    auth,
    content_encoding,
    docs,
    errors,
    experiment_observe,
    experiment_report,
    experiments,
    health,
    metrics,
    mlflow,
    models,
    monitoring,
    observe,
    predict,
    request_ids,
    routing,
    status,
    v2,
)
from service.api import shadow as shadow_api
from service.config import Settings
from service.monitoring.hub import Monitoring
from service.runtime import shadow
from service.runtime.registry import ModelRegistry
from service.store import ModelStore
from service.store.remote import RemoteStore


@dataclasses.dataclass
class ServiceState:
    """What the blueprints share, reached through ``current_app.extensions``."""

    settings: Settings
    store: ModelStore
    registry: ModelRegistry
    # Where promotions and rollbacks go: the fleet's authoritative store when there is one
    # (this host serves a verified mirror of it, ``store``), else ``store`` itself.
    authority: ModelStore | RemoteStore


class ServiceFlask(Flask):
    """Flask, asking once per function whether it is a coroutine function.

    Flask asks for every hook and view on every request (a dozen times for a prediction,
    each through ``inspect``): about 5 % of a single-row request's time in the worker."""

    def __init__(self, import_name: str) -> None:
        super().__init__(import_name)
        self._synchronous: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        found = self._synchronous.get(func)
        if found is None:
            # Hooks and views are registered once, so this holds a few dozen entries.
            found = self._synchronous[func] = super().ensure_sync(func)
        return found


def build_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = ServiceFlask("service")
    settings = Settings.load(overrides=test_config)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    store = ModelStore.from_settings(settings)
    registry = ModelRegistry(store, settings)
    # This app's metrics, live monitor (feedback joins, drift counts, the prediction log)
    # and experiment and shadow recorders, observing this registry's predictions; before
    # the first load, so load times are counted.
    app_monitoring = Monitoring(settings, registry)
    # Request metrics and the request log, as the settings say.
    observe.init_app(app, settings, registry, app_monitoring.metrics)
    # Experiments: each variant's answers, errors and latency, for its metrics and report.
    experiment_observe.init_app(app, app_monitoring)
    # Load every aliased version now: under preload_app this happens once, in the
    # Gunicorn master, and the workers share the loaded models copy-on-write.
    registry.refresh()
    authority = RemoteStore.from_settings(settings) if settings.store_remote else store
    app.extensions[EXTENSION] = ServiceState(settings, store, registry, authority)

    request_ids.init_app(app, settings.instance_name or socket.gethostname())
    # Prediction answers name the version (and experiment variant) that served them.
    routing.init_app(app)
    errors.init_app(app)
    # Request bodies in gzip or deflate are decoded (bounded by max_body_bytes), others refused.
    content_encoding.init_app(app)
    for blueprint in (health.bp, models.bp, predict.bp, admin.bp, mlflow.bp, docs.bp, v2.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(experiments.bp)
    app.register_blueprint(experiment_report.bp)
    app.register_blueprint(shadow_api.bp)
    app.register_blueprint(monitoring.bp)
    # Feedback, live quality and drift; the app's monitoring for every blueprint.
    monitoring.init_app(app, app_monitoring)
    # Experiments' shadow traffic: run on the candidate off the request path (one runner
    # per process), recorded by the app's monitoring.
    shadow.install(registry)
    if settings.store_remote:
        from service.monitoring.store_sync import StoreSyncCollector

        app_monitoring.add_collector(StoreSyncCollector(settings))
    app.register_blueprint(metrics.bp)
    app.register_blueprint(status.bp)
    # Last: it checks that every route registered above has a scope.
    auth.init_app(app, settings)
    return app
