"""What shadow runs found, per model, experiment and candidate, in the host's state.

``service.runtime.shadow`` tells its listeners of every run and every drop, in the request
that finds it. The recorder adds them up in memory and a timer per process
(``ProcessFlusher``, like the live monitor's) adds the sums to the ``shadow_totals`` table
of the workers' shared SQLite state once a second: one upsert per (model, experiment,
candidate) per flush, however many requests were shadowed. The sums are sufficient
statistics, so the figures of every worker (and the gRPC server) of the host add up, and
so do those of a fleet's hosts (:func:`merge`): :func:`figures` turns them into agreement,
differences and error rates, :func:`status` does it for this host.

Nothing here imports Flask.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sqlite3
import threading
import time
from typing import Any

from service.config import Settings
from service.monitoring.flusher import ProcessFlusher
from service.monitoring.state import StateStore
from service.runtime import shadow

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
# The normal quantile of a 95 % interval, for the agreement's Wilson interval.
Z_95 = 1.959963984540054

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS shadow_totals (
    model TEXT NOT NULL,
    experiment TEXT NOT NULL,
    candidate TEXT NOT NULL,
    task TEXT NOT NULL,
    candidate_version INTEGER,
    runs INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    agreed INTEGER NOT NULL,
    difference_sum REAL NOT NULL,
    difference_sq_sum REAL NOT NULL,
    abs_difference_sum REAL NOT NULL,
    abs_difference_max REAL NOT NULL,
    seconds_sum REAL NOT NULL,
    {", ".join(f"errors_{kind} INTEGER NOT NULL" for kind in shadow.ERROR_KINDS)},
    updated REAL NOT NULL,
    PRIMARY KEY (model, experiment, candidate)
);
"""
SUMMED = (
    "runs",
    "dropped",
    "rows",
    "agreed",
    "difference_sum",
    "difference_sq_sum",
    "abs_difference_sum",
    "seconds_sum",
    *(f"errors_{kind}" for kind in shadow.ERROR_KINDS),
)
_UPSERT = (
    "INSERT INTO shadow_totals (model, experiment, candidate, task, candidate_version, "
    f"{', '.join(SUMMED)}, abs_difference_max, updated) VALUES "
    f"({', '.join('?' * (len(SUMMED) + 7))}) "
    "ON CONFLICT (model, experiment, candidate) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in SUMMED)
    + ", candidate_version = COALESCE(excluded.candidate_version, candidate_version)"
    ", abs_difference_max = MAX(abs_difference_max, excluded.abs_difference_max)"
    ", updated = excluded.updated"
)


@dataclasses.dataclass
class _Totals:
    task: str
    candidate_version: int | None = None
    runs: int = 0
    dropped: int = 0
    rows: int = 0
    agreed: int = 0
    difference_sum: float = 0.0
    difference_sq_sum: float = 0.0
    abs_difference_sum: float = 0.0
    abs_difference_max: float = 0.0
    seconds_sum: float = 0.0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)


class ShadowRecorder:
    def __init__(self, settings: Settings):
        self.state = StateStore(
            settings.state_dir, prediction_retention=settings.prediction_retention
        )
        self._totals: dict[tuple[str, str, str], _Totals] = {}
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._schema_pid: int | None = None
        self._flusher = ProcessFlusher(
            self.flush, FLUSH_INTERVAL, "shadow-recorder", after_fork=self._after_fork
        )

    # -- listeners of service.runtime.shadow ------------------------------------------

    def record(self, outcome: shadow.ShadowOutcome) -> None:
        """A run, in the request that reads it: numpy sums of its differences."""
        if self._pid != os.getpid():
            self._start()
        differences = outcome.differences
        with self._lock:
            totals = self._entry(outcome.model, outcome.experiment, outcome.candidate, outcome)
            totals.runs += 1
            totals.seconds_sum += outcome.seconds
            if outcome.candidate_version is not None:
                totals.candidate_version = outcome.candidate_version
            if outcome.error is not None:
                totals.errors[outcome.error] = totals.errors.get(outcome.error, 0) + 1
                return
            totals.rows += outcome.rows
            totals.agreed += outcome.agreed
            if differences is not None and differences.size:
                absolute = abs(differences)
                totals.difference_sum += float(differences.sum())
                totals.difference_sq_sum += float(differences @ differences)
                totals.abs_difference_sum += float(absolute.sum())
                totals.abs_difference_max = max(totals.abs_difference_max, float(absolute.max()))

    def drop(self, work: shadow.ShadowWork) -> None:
        """A drop, in the request: a dict look-up and an increment."""
        if self._pid != os.getpid():
            self._start()
        with self._lock:
            self._entry(work.model, work.experiment, work.candidate, work).dropped += 1

    def _entry(self, model: str, experiment: str, candidate: str, item: Any) -> _Totals:
        key = (model, experiment, candidate)
        totals = self._totals.get(key)
        if totals is None:
            totals = self._totals[key] = _Totals(item.primary.task)
        return totals

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        self._flusher.start()

    def _after_fork(self) -> None:
        self._totals = {}
        self._lock = threading.Lock()
        self._pid = None

    def stop(self) -> None:
        self._flusher.stop()
        self.flush()
        self._pid = None

    # -- the writer --------------------------------------------------------------------

    def flush(self) -> int:
        """Add what this process counted to the state; returns the rows written. Never
        raises (what could not be written is logged and dropped)."""
        with self._lock:
            totals, self._totals = self._totals, {}
        if not totals:
            return 0
        now = time.time()
        records = [
            (
                *key,
                t.task,
                t.candidate_version,
                t.runs,
                t.dropped,
                t.rows,
                t.agreed,
                t.difference_sum,
                t.difference_sq_sum,
                t.abs_difference_sum,
                t.seconds_sum,
                *(t.errors.get(kind, 0) for kind in shadow.ERROR_KINDS),
                t.abs_difference_max,
                now,
            )
            for key, t in totals.items()
        ]
        try:
            conn = self._connection()
            with self.state.transaction(conn):
                conn.executemany(_UPSERT, records)
        except (sqlite3.Error, OSError):
            log.exception("shadow: %d totals could not be recorded", len(records))
            return 0
        return len(records)

    def _connection(self) -> sqlite3.Connection:
        conn = self.state.connection()
        if self._schema_pid != os.getpid():
            conn.executescript(SCHEMA)
            self._schema_pid = os.getpid()
        return conn


# -- reading ----------------------------------------------------------------------------


def totals(
    settings: Settings,
    name: str,
    experiment: str | None = None,
    *,
    recorder: ShadowRecorder | None = None,
) -> list[dict[str, Any]]:
    """This host's sums for a model (one experiment's, or every one's), one per
    (experiment, candidate): sufficient statistics, which :func:`merge` adds up over hosts.
    What this process counted is flushed first: ``recorder``'s (an app's) and that of the
    recorder :func:`install` put in place, if any."""
    for counted in {recorder, _active} - {None}:
        counted.flush()
    state = StateStore(settings.state_dir, prediction_retention=settings.prediction_retention)
    try:
        conn = state.connection()
        conn.executescript(SCHEMA)
        query = "SELECT * FROM shadow_totals WHERE model = ?"
        arguments: tuple[Any, ...] = (name,)
        if experiment is not None:
            query += " AND experiment = ?"
            arguments += (experiment,)
        cursor = conn.execute(query + " ORDER BY updated", arguments)
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    finally:
        state.close()


def merge(*hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The totals of several hosts added up, per (experiment, candidate)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in hosts:
        for row in rows:
            key = (row["experiment"], row["candidate"])
            found = merged.get(key)
            if found is None:
                merged[key] = dict(row)
                continue
            for column in SUMMED:
                found[column] += row[column]
            found["abs_difference_max"] = max(
                found["abs_difference_max"], row["abs_difference_max"]
            )
            if row["updated"] >= found["updated"]:
                found["updated"] = row["updated"]
                if row["candidate_version"] is not None:
                    found["candidate_version"] = row["candidate_version"]
    return list(merged.values())


def checked(row: Any) -> dict[str, Any]:
    """A row of :func:`totals` as another host sent it (it crossed a network): every column
    there with a value of its type, else ValueError."""
    if not isinstance(row, dict):
        raise ValueError("a shadow total must be a mapping")
    try:
        found: dict[str, Any] = {
            "model": str(row["model"]),
            "experiment": str(row["experiment"]),
            "candidate": str(row["candidate"]),
            "task": str(row["task"]),
            "candidate_version": (
                None if row["candidate_version"] is None else int(row["candidate_version"])
            ),
            "abs_difference_max": float(row["abs_difference_max"]),
            "updated": float(row["updated"]),
        }
        for column in SUMMED:
            number = float(row[column])
            if not math.isfinite(number):
                raise ValueError(f"{column} is not finite")
            found[column] = int(number) if column in _COUNTS else number
    except KeyError as exc:
        raise ValueError(f"a shadow total lacks {exc.args[0]!r}") from None
    except TypeError as exc:
        raise ValueError(f"a shadow total is not understood: {exc}") from None
    return found


_COUNTS = ("runs", "dropped", "rows", "agreed", *(f"errors_{k}" for k in shadow.ERROR_KINDS))


def status(
    settings: Settings,
    name: str,
    experiment: str | None = None,
    *,
    recorder: ShadowRecorder | None = None,
) -> list[dict[str, Any]]:
    """This host's shadow figures for a model: agreement, differences, errors, drops."""
    return [figures(row) for row in totals(settings, name, experiment, recorder=recorder)]


def figures(row: dict[str, Any]) -> dict[str, Any]:
    errors = {kind: row[f"errors_{kind}"] for kind in shadow.ERROR_KINDS}
    failed = sum(errors.values())
    runs, rows = row["runs"], row["rows"]
    entry: dict[str, Any] = {
        "experiment": row["experiment"],
        "candidate": row["candidate"],
        "candidate_version": row["candidate_version"],
        "task": row["task"],
        "runs": runs,
        "dropped": row["dropped"],
        "errors": errors,
        "error_rate": failed / runs if runs else None,
        "rows": rows,
        "mean_seconds": row["seconds_sum"] / runs if runs else None,
    }
    if row["task"] == "classification":
        entry["agreed"] = row["agreed"]
        entry["agreement"] = row["agreed"] / rows if rows else None
        entry["agreement_interval"] = wilson(row["agreed"], rows) if rows else None
    else:
        mean = row["difference_sum"] / rows if rows else None
        variance = (
            max(0.0, row["difference_sq_sum"] / rows - mean * mean) if mean is not None else None
        )
        entry["difference"] = {
            "mean": mean,
            "std": math.sqrt(variance) if variance is not None else None,
            "mean_abs": row["abs_difference_sum"] / rows if rows else None,
            "max_abs": row["abs_difference_max"] if rows else None,
        }
    return entry


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (good near 0 and 1, unlike the normal one)."""
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


# -- a front end that builds no app (the gRPC server): one recorder per process --------
# An app's recorder is its Monitoring's (service.monitoring.hub).

_active: ShadowRecorder | None = None


def install(settings: Settings) -> ShadowRecorder:
    """Record every shadow run of this process in the host's state (replacing any earlier
    recorder installed so)."""
    global _active
    previous, _active = _active, ShadowRecorder(settings)
    if previous is not None:
        previous.stop()
    if _record not in shadow.outcome_listeners:
        shadow.outcome_listeners.append(_record)
    if _drop not in shadow.drop_listeners:
        shadow.drop_listeners.append(_drop)
    return _active


def active() -> ShadowRecorder | None:
    return _active


def _record(outcome: shadow.ShadowOutcome) -> None:
    recorder = _active
    if recorder is not None:
        recorder.record(outcome)


def _drop(work: shadow.ShadowWork) -> None:
    recorder = _active
    if recorder is not None:
        recorder.drop(work)
