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

import contextlib
import datetime
import logging
import os
import select
import sys
import threading
import time
from typing import Any, TextIO

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

from service import safejson
from service.monitoring.flusher import ProcessFlusher

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
        log_data["timestamp"] = _timestamp(record.created)
        super().add_fields(log_data, record, message_dict)

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        try:
            return super().jsonify_log_record(log_data)
        except TypeError:
            # A message or field holding a client's lone surrogate: escaped, never lost.
            return super().jsonify_log_record(safejson.printable(log_data))


def request_logger() -> logging.Logger:
    return logging.getLogger(REQUEST_LOGGER)


def _timestamp(seconds: float) -> str:
    created = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return created.isoformat(timespec="microseconds").replace("+00:00", "Z")


class _SecondStamp:
    """``_timestamp`` for a clock that moves forward a little at a time: the date and time
    down to the second are formatted once a second, the microseconds added to them. A
    worker writes thousands of request lines a second, and building a datetime for each
    costs more than the rest of the line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, seconds: float) -> str:
        whole = int(seconds)
        if whole != self._second:
            moment = datetime.datetime.fromtimestamp(whole, tz=datetime.UTC)
            self._prefix = moment.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = whole
        return f"{self._prefix}.{int((seconds - whole) * 1e6):06d}Z"


# Request lines wait in a process's buffer until it holds this much, or for the timer's
# next tick, at most FLUSH_INTERVAL seconds (Nginx's access_log buffer= and flush=). A
# write of at most PIPE_BUF bytes to a pipe is never interleaved with another process's,
# so lines stay whole in a shared stderr, a pipe or an O_APPEND file.
BUFFER_BYTES = select.PIPE_BUF
FLUSH_INTERVAL = 0.5


class RequestLog:
    """The request log's writer: one JSON line per request, as :class:`JsonFormatter`
    would render it.

    Going through ``logging`` costs ~40 µs a line (a LogRecord, handler locks, the
    formatter's generic merging of extra fields): a third of a cheap prediction. When the
    logger's records end in plain stream or file handlers with this module's formatter
    (how deploy/gunicorn.conf.py sets it up), the line is rendered with orjson, and lines
    are written to their file descriptors a buffer at a time: one ``write`` per
    ``BUFFER_BYTES`` (about ten lines) instead of one per request, by the request that fills
    the buffer, or by a timer thread within ``FLUSH_INTERVAL`` seconds, or at exit. A
    worker that is killed loses at most that last half second of lines (Nginx's access
    log still has those requests). Any other set-up — a test's capture handler, a filter,
    a handler without a file — gets each record through ``logging`` at once, as before.
    """

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or request_logger()
        self._handlers_seen: tuple[logging.Handler, ...] | None = None
        self._descriptors: tuple[int, ...] | None = None
        self._stamp = _SecondStamp()
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_to: tuple[int, ...] = ()
        self._pid: int | None = None
        self._flusher = ProcessFlusher(
            self.flush, FLUSH_INTERVAL, "request-log-flusher", after_fork=self._after_fork
        )

    def write(self, message: str, fields: dict[str, Any]) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        descriptors = self._fast_descriptors()
        if descriptors is None:
            logger.info("%s", message, extra=fields)
            return
        pid = os.getpid()
        line = safejson.dumps(
            {
                "timestamp": self._stamp(time.time()),
                "level": "INFO",
                "logger": logger.name,
                "message": message,
                "pid": pid,
                **fields,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        with self._lock:
            if pid != self._pid:
                self._start(pid)
            if descriptors != self._pending_to or (self._pending_bytes + len(line) > BUFFER_BYTES):
                self._write_pending()
                self._pending_to = descriptors
            self._pending.append(line)
            self._pending_bytes += len(line)

    def flush(self) -> None:
        """Write what this process's buffer holds now."""
        with self._lock:
            if self._pid == os.getpid():
                self._write_pending()

    def stop(self) -> None:
        """Flush and end this process's timer thread (it starts again on the next line)."""
        self._flusher.stop()
        self.flush()
        with self._lock:
            self._pid = None

    def _start(self, pid: int) -> None:
        # The first line in this process starts its timer (threads do not survive a
        # fork). Under the lock.
        self._flusher.start()
        self._pid = pid

    def _after_fork(self) -> None:
        # The child starts empty (what the parent buffered is the parent's to write), with
        # a lock of its own: the parent's timer may have held it at the fork.
        self._lock = threading.Lock()
        self._pending, self._pending_bytes = [], 0
        self._pid = None

    def _write_pending(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        for descriptor in self._pending_to:
            # A closed or full log never fails a request.
            with contextlib.suppress(OSError):
                os.write(descriptor, data)

    def _fast_descriptors(self) -> tuple[int, ...] | None:
        handlers = _effective_handlers(self.logger)
        if handlers != self._handlers_seen:
            self._handlers_seen = handlers
            self._descriptors = _plain_json_descriptors(handlers)
        return self._descriptors


def _effective_handlers(logger: logging.Logger) -> tuple[logging.Handler, ...]:
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    return tuple(found)


def _plain_json_descriptors(handlers: tuple[logging.Handler, ...]) -> tuple[int, ...] | None:
    """The file descriptors behind the handlers, when every one is a plain JSON stream."""
    if not handlers:
        return None
    descriptors = []
    for handler in handlers:
        if type(handler) not in (logging.StreamHandler, logging.FileHandler):
            return None
        if not isinstance(handler.formatter, JsonFormatter) or handler.filters:
            return None
        if handler.level > logging.INFO:
            return None
        stream = getattr(handler, "stream", None)
        try:
            descriptors.append(stream.fileno())  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            return None
    return tuple(descriptors)


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
