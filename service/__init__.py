"""model-service: a production server for scikit-learn models.

``create_app`` builds the Flask application (Flask is imported only then, so
the store and runtime can be used without it). ``load_model`` loads one model
from the store for use in another program, with the checks the service makes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from service.runtime.model import LoadedModel

__version__ = "0.1.0"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The application factory: settings from the environment, overridden by test_config."""
    from service.app import build_app

    return build_app(test_config)


def load_model(ref: str, store: str | os.PathLike[str] | None = None) -> LoadedModel:
    """Load ``name``, ``name@version`` or ``name@alias`` (``name`` alone: the default alias)
    from the store (default: the ``store`` setting, MODEL_SERVICE_STORE, else
    ./model_store), verified as the service verifies it: sha256 before unpickling,
    estimator checks, golden replay. ``model.predict(rows)`` validates and predicts."""
    from service.config import Settings
    from service.runtime.model import load
    from service.store import ModelStore, parse_ref

    settings = Settings.load(overrides=None if store is None else {"store": store})
    model_store = ModelStore.from_settings(settings)
    parsed = parse_ref(ref)
    version = model_store.resolve(parsed, settings.default_alias)
    return load(
        model_store,
        parsed.name,
        version,
        refuse_version_mismatch=settings.refuse_version_mismatch,
    )
