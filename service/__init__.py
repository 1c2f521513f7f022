"""model-service: a production server for scikit-learn models.

``create_app`` builds the Flask application (Flask is imported only then, so
the store and runtime can be used without it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__version__ = "0.1.0"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The application factory: settings from the environment, overridden by test_config."""
    from service.app import build_app

    return build_app(test_config)
