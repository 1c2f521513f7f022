"""JSON logs: one line per log record, the same shape for the request log, the
application's loggers (``service.*``) and Gunicorn's error log.

Every line has ``timestamp`` (ISO-8601, UTC), ``level``, ``logger``, ``message`` and
``pid``; the request log (logger ``service.requests``, written by
``service.api.observe``) adds ``request_id``, ``method``, ``route``, ``path``, ``model``,
``version``, ``status``, ``instances`` and ``latency_ms``. Request bodies and feature
values are never logged.

Library code never configures logging: Gunicorn does it through ``logconfig_dict`` in
deploy/gunicorn.conf.py, and other entry points (the gRPC server) call :func:`configure`.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any, TextIO

from pythonjsonlogger.orjson import OrjsonFormatter

REQUEST_LOGGER = "service.requests"
FIELDS = ("levelname", "name", "message", "process")
RENAMED = {"levelname": "level", "name": "logger", "process": "pid"}


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's formatter with our fields and names, the timestamp first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("rename_fields", RENAMED)
        if not args and "fmt" not in kwargs:
            args = (list(FIELDS),)
        super().__init__(*args, **kwargs)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        created = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        log_data["timestamp"] = created.isoformat(timespec="microseconds").replace("+00:00", "Z")
        super().add_fields(log_data, record, message_dict)


def request_logger() -> logging.Logger:
    return logging.getLogger(REQUEST_LOGGER)


def configure(stream: TextIO | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send every logger's records to ``stream`` (stderr) as JSON lines: for entry points
    that do not run under Gunicorn."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
