"""The prediction log: served inputs and outputs as JSON lines, for the next training round.

Off unless ``prediction_log`` is on (it holds raw feature values). A share
``prediction_log_sample_rate`` of requests is logged, every row of a sampled request.
Each process writes its own file, ``<state_dir>/predictions/predictions-<pid>.jsonl``,
through :class:`logging.handlers.RotatingFileHandler` (``prediction_log_max_bytes``,
``prediction_log_backups``), so no two writers ever share a file and rotation needs no
locking between processes. One line:

    {"time": "2024-05-01T12:00:00.123456+00:00", "request_id": "...", "model": "iris-classifier",
     "version": 1, "inputs": {"sepal_length_cm": 5.1, ...},
     "outputs": {"prediction": "setosa", "probabilities": {"setosa": 0.97, ...}}}

:func:`export_csv` (``modelctl export-log``) merges every process's files, rotated
ones too, into one CSV ordered by time.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import logging.handlers
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.files import replacing

SUBDIR = "predictions"
PREFIX = "predictions-"
SUFFIX = ".jsonl"
FIXED_COLUMNS = ("time", "request_id", "model", "version")


def log_dir(state_dir: Path | str) -> Path:
    return Path(state_dir) / SUBDIR


class PredictionLog:
    """This process's writer; reopened under the new pid after a fork."""

    def __init__(self, state_dir: Path | str, *, max_bytes: int, backups: int):
        self.directory = log_dir(state_dir)
        self.max_bytes = max_bytes
        self.backups = backups
        self._handler: logging.handlers.RotatingFileHandler | None = None
        self._pid: int | None = None

    def _current_handler(self) -> logging.handlers.RotatingFileHandler:
        pid = os.getpid()
        if self._handler is None or self._pid != pid:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._handler = logging.handlers.RotatingFileHandler(
                self.directory / f"{PREFIX}{pid}{SUFFIX}",
                maxBytes=self.max_bytes,
                backupCount=self.backups,
                encoding="utf-8",
                delay=True,
            )
            self._handler.setFormatter(logging.Formatter("%(message)s"))
            self._pid = pid
        return self._handler

    def write(self, lines: list[dict[str, Any]]) -> None:
        handler = self._current_handler()
        for line in lines:
            text = json.dumps(line, separators=(",", ":"), allow_nan=False, default=_plain)
            handler.emit(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))
        if handler.stream is not None:
            handler.flush()

    def close(self) -> None:
        if self._handler is not None and self._pid == os.getpid():
            self._handler.close()
        self._handler = None


def iso_time(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="microseconds")


def lines_for(
    model: Any, model_input: Any, prediction: Any, request_id: str | None, seconds: float
) -> list[dict[str, Any]]:
    """One log line per served row."""
    names = list(model.schema.names)
    if isinstance(model_input, pd.DataFrame):
        rows = model_input[names].itertuples(index=False, name=None)
    elif isinstance(model_input, list):  # one array per feature
        rows = zip(*(column.tolist() for column in model_input), strict=True)
    else:
        rows = np.asarray(model_input).tolist()
    classes = [str(c) for c in model.classes] if model.classes is not None else None
    probabilities = prediction.probabilities
    when = iso_time(seconds)
    lines = []
    for i, row in enumerate(rows):
        outputs: dict[str, Any] = {"prediction": _plain(prediction.predictions[i])}
        if probabilities is not None and classes is not None:
            outputs["probabilities"] = dict(zip(classes, probabilities[i], strict=True))
        lines.append(
            {
                "time": when,
                "request_id": request_id,
                "model": model.name,
                "version": model.version,
                "inputs": {n: _plain(v) for n, v in zip(names, row, strict=True)},
                "outputs": outputs,
            }
        )
    return lines


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python ones, NaN (a missing value) as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# -- export ------------------------------------------------------------------------


def log_files(state_dir: Path | str) -> list[Path]:
    """Every process's file, the current ones and the rotated ones."""
    directory = log_dir(state_dir)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(f"{PREFIX}*{SUFFIX}*") if p.is_file())


def read_lines(state_dir: Path | str) -> Iterator[dict[str, Any]]:
    for path in log_files(state_dir):
        with open(path, encoding="utf-8") as handle:
            for text in handle:
                text = text.strip()
                if not text:
                    continue
                try:
                    yield json.loads(text)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: skip it


def parse_time(text: str) -> dt.datetime:
    """ISO-8601; a time without a zone is taken as UTC."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def export_csv(
    state_dir: Path | str,
    output: Path | str,
    *,
    model: str | None = None,
    since: dt.datetime | None = None,
) -> int:
    """Merge the log into one CSV ordered by time: time, request_id, model, version, each
    feature, prediction, probability_<class>... Returns the rows written."""
    rows = []
    for line in read_lines(state_dir):
        if model is not None and line.get("model") != model:
            continue
        try:
            when = parse_time(line["time"])
        except (KeyError, TypeError, ValueError):
            continue
        if since is not None and when < since:
            continue
        rows.append((when, line))
    rows.sort(key=lambda item: item[0])
    features: dict[str, None] = {}
    classes: dict[str, None] = {}
    for _, line in rows:
        features.update(dict.fromkeys(line.get("inputs") or {}))
        classes.update(dict.fromkeys((line.get("outputs") or {}).get("probabilities") or {}))
    header = [
        *FIXED_COLUMNS,
        *features,
        "prediction",
        *(f"probability_{c}" for c in classes),
    ]
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with replacing(output, text=True, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for _, line in rows:
            inputs = line.get("inputs") or {}
            outputs = line.get("outputs") or {}
            probabilities = outputs.get("probabilities") or {}
            writer.writerow(
                [
                    *(_cell(line.get(c)) for c in FIXED_COLUMNS),
                    *(_cell(inputs.get(f)) for f in features),
                    _cell(outputs.get("prediction")),
                    *(_cell(probabilities.get(c)) for c in classes),
                ]
            )
    return len(rows)


def _cell(value: Any) -> Any:
    return "" if value is None else value
