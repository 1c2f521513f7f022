"""The monitoring state the workers of one host share: one SQLite database.

Every Gunicorn worker (and the gRPC server) is its own process, so what one of them
served must be visible to the others: feedback for a prediction may reach any worker,
and live quality and drift are figures of the whole host. They all write to
``<state_dir>/state.db`` in WAL mode (readers never block the writer) with a busy
timeout (writers wait for each other instead of failing). Each process, and each
thread in it, opens its own connection: SQLite connections must not cross a fork.

Tables:

- ``served``: one row per served request (model, request id, version, its labels or
  values as one JSON array, time), with a running count of rows so that the newest
  ``prediction_retention`` served rows are kept, for the join. One row per request, not
  per prediction: a 1,000-row request is one insert, not a thousand.
- ``feedback``: the label given for a served row, with the prediction it joined;
  one row per (model, request id, index): a second label replaces the first.
- ``feedback_totals``: labels received per model version (a counter, never pruned).
- ``drift_counts``: live feature values per (model, version, feature, bin, minute),
  pruned past the drift window.
- ``experiment_counts``: requests an experiment's variants answered and failed, per
  (experiment, variant, version, latency bucket): counters, never pruned (a few rows per
  experiment), so an experiment's totals are exact however long it runs.
- ``experiment_requests``: one row per request an experiment's variant answered or
  failed: request id, experiment, variant, version, ok or not, latency; feedback joins to
  it by request id. Pruned like ``served``.

Nothing here imports Flask.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

DATABASE = "state.db"
BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
-- Served predictions before 0.1's one-row-per-request layout: a cache, dropped.
DROP TABLE IF EXISTS predictions;
CREATE TABLE IF NOT EXISTS served (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    outputs TEXT NOT NULL,
    -- rows served up to and including this request, over all requests
    rows_through INTEGER NOT NULL,
    time REAL NOT NULL,
    UNIQUE (model, request_id)
);
CREATE INDEX IF NOT EXISTS served_by_rows ON served (rows_through);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    prediction TEXT NOT NULL,
    label TEXT NOT NULL,
    time REAL NOT NULL,
    UNIQUE (model, request_id, idx)
);
CREATE INDEX IF NOT EXISTS feedback_by_version ON feedback (model, version, seq);
CREATE TABLE IF NOT EXISTS feedback_totals (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    total INTEGER NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS drift_counts (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    feature TEXT NOT NULL,
    bin TEXT NOT NULL,
    minute INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (model, version, feature, minute, bin)
);
CREATE TABLE IF NOT EXISTS experiment_counts (
    experiment TEXT NOT NULL,
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    version INTEGER NOT NULL,
    -- index of the answer's latency in service.monitoring.experiments.LATENCY_BUCKETS
    bucket INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (experiment, variant, version, bucket)
);
-- Its first layout, without the answer's outcome and latency.
DROP TABLE IF EXISTS experiment_served;
CREATE TABLE IF NOT EXISTS experiment_requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    version INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    seconds REAL NOT NULL,
    time REAL NOT NULL,
    UNIQUE (model, request_id)
);
CREATE INDEX IF NOT EXISTS experiment_requests_by_experiment ON experiment_requests (experiment);
"""

# Per variant and version of an experiment, over its labelled rows: labelled, correct (the
# prediction is the label: equal JSON, or equal numbers for a numeric class), and the sums
# of |prediction - label| and its square (numeric labels only: a regressor's).
_EXPERIMENT_QUALITY = """
SELECT e.experiment, e.model, e.variant, e.version, COUNT(*),
    SUM(CASE WHEN json_type(f.label) IN ('integer', 'real')
        THEN f.prediction + 0.0 = f.label + 0.0 ELSE f.prediction = f.label END),
    TOTAL(CASE WHEN json_type(f.label) IN ('integer', 'real')
        THEN ABS(f.prediction - f.label) END),
    TOTAL(CASE WHEN json_type(f.label) IN ('integer', 'real')
        THEN (f.prediction - f.label) * (f.prediction - f.label) END)
FROM feedback AS f JOIN experiment_requests AS e
    ON e.model = f.model AND e.request_id = f.request_id
"""


# Served outputs of a request this long are inserted by a statement step of their own.
OWN_STEP_ROWS = 64


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _batch_json(records: list[Any]) -> str:
    # NaN is not JSON: stored as null, like a value the model could not give.
    return orjson.dumps(records, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def loads(text: str) -> Any:
    return json.loads(text)


class StateStore:
    """The shared SQLite database under ``state_dir``; created (idempotently) on first use."""

    def __init__(self, state_dir: Path | str, *, prediction_retention: int = 200_000):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DATABASE
        self.prediction_retention = prediction_retention
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        self._schema_ready_pid: int | None = None

    # -- connections -----------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This process's and this thread's connection (a forked child opens its own)."""
        pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == pid:
            return conn
        self.state_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._local.conn, self._local.pid = conn, pid
        self._ensure_schema(conn, pid)
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection, pid: int) -> None:
        with self._schema_lock:
            if self._schema_ready_pid == pid:
                return
            # CREATE ... IF NOT EXISTS: any number of processes may run this at once.
            conn.executescript(SCHEMA)
            self._schema_ready_pid = pid

    @contextlib.contextmanager
    def transaction(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock up front (no upgrade deadlocks)."""
        conn = conn or self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()

    # -- writes (batched by the recorder) ---------------------------------------

    def write_batch(
        self,
        requests: Iterable[tuple[str, str, int, list[Any], float]],
        drift: dict[tuple[str, int, str, str, int], int],
        *,
        prune_drift_before: int | None = None,
    ) -> None:
        """Served requests (model, request_id, version, outputs, time) and drift counts
        {(model, version, feature, bin, minute): n}, in one transaction."""
        with self.transaction() as conn:
            (rows_through,) = conn.execute(
                "SELECT COALESCE(MAX(rows_through), 0) FROM served"
            ).fetchone()
            few_rows, many_rows = [], []
            for model, request_id, version, outputs, seconds in requests:
                rows_through += len(outputs)
                record = (model, request_id, version, outputs, rows_through, seconds)
                (many_rows if len(outputs) >= OWN_STEP_ROWS else few_rows).append(record)
            # Requests of a few rows go in one statement over a JSON array, not executemany:
            # sqlite3 lets go of the GIL around every step, and a step per request would
            # hand the GIL back and forth with the request thread hundreds of times a flush.
            conn.execute(
                "INSERT OR REPLACE INTO served"
                " (model, request_id, version, outputs, rows_through, time)"
                " SELECT value ->> 0, value ->> 1, value ->> 2, value -> 3, value ->> 4,"
                " value ->> 5 FROM json_each(?)",
                (_batch_json(few_rows),),
            )
            # A request of many rows takes a step of its own, its outputs written as JSON
            # here: SQLite's JSON functions take three times as long to copy 1,000 outputs
            # out of the array, and there are few such requests a flush.
            conn.executemany(
                "INSERT OR REPLACE INTO served"
                " (model, request_id, version, outputs, rows_through, time)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(*record[:3], _batch_json(record[3]), *record[4:]) for record in many_rows],
            )
            conn.execute(
                "INSERT INTO drift_counts (model, version, feature, bin, minute, count)"
                " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,"
                " value ->> 5 FROM json_each(?) WHERE true"
                " ON CONFLICT (model, version, feature, minute, bin)"
                " DO UPDATE SET count = count + excluded.count",
                (_batch_json([(*key, n) for key, n in drift.items()]),),
            )
            # Whole requests go once all their rows are older than the newest retained rows.
            conn.execute(
                "DELETE FROM served WHERE rows_through <= ?",
                (rows_through - self.prediction_retention,),
            )
            if prune_drift_before is not None:
                conn.execute("DELETE FROM drift_counts WHERE minute < ?", (prune_drift_before,))

    # -- the feedback join ------------------------------------------------------

    def served(self, model: str, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Any]:
        """The served rows among (request_id, index) keys: {key: (version, output)}."""
        conn = self.connection()
        found: dict[tuple[str, int], Any] = {}
        requests: dict[str, tuple[int, list[Any]] | None] = {}
        for request_id, index in keys:
            if request_id not in requests:
                row = conn.execute(
                    "SELECT version, outputs FROM served WHERE model = ? AND request_id = ?",
                    (model, request_id),
                ).fetchone()
                requests[request_id] = None if row is None else (int(row[0]), loads(row[1]))
            served = requests[request_id]
            if served is not None and 0 <= index < len(served[1]):
                found[(request_id, index)] = (served[0], served[1][index])
        return found

    def record_feedback(
        self, model: str, items: Iterable[tuple[str, int, int, Any, Any]]
    ) -> list[bool]:
        """Store labels (request_id, index, version, prediction, label); a label for a row
        that already has one replaces it and becomes the newest. Returns, per item,
        whether it replaced an earlier label."""
        replaced = []
        now = time.time()
        with self.transaction() as conn:
            for request_id, index, version, prediction, label in items:
                earlier = conn.execute(
                    "SELECT 1 FROM feedback WHERE model = ? AND request_id = ? AND idx = ?",
                    (model, request_id, index),
                ).fetchone()
                replaced.append(earlier is not None)
                conn.execute(
                    "INSERT OR REPLACE INTO feedback"
                    " (model, version, request_id, idx, prediction, label, time)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (model, version, request_id, index, dumps(prediction), dumps(label), now),
                )
                conn.execute(
                    "INSERT INTO feedback_totals (model, version, total) VALUES (?, ?, 1)"
                    " ON CONFLICT (model, version) DO UPDATE SET total = total + 1",
                    (model, version),
                )
            # Live quality looks at the newest quality_window labels per version; older
            # ones are kept only up to the same retention as served predictions.
            conn.execute(
                "DELETE FROM feedback WHERE seq <= (SELECT MAX(seq) FROM feedback) - ?",
                (self.prediction_retention,),
            )
        return replaced

    # -- reads --------------------------------------------------------------------

    def labelled(self, model: str, version: int, window: int) -> list[tuple[Any, Any]]:
        """The newest ``window`` (prediction, label) pairs of a model version."""
        rows = (
            self.connection()
            .execute(
                "SELECT prediction, label FROM feedback WHERE model = ? AND version = ?"
                " ORDER BY seq DESC LIMIT ?",
                (model, version, window),
            )
            .fetchall()
        )
        return [(loads(p), loads(label)) for p, label in rows]

    def feedback_totals(self, model: str | None = None) -> dict[tuple[str, int], int]:
        sql, args = "SELECT model, version, total FROM feedback_totals", ()
        if model is not None:
            sql, args = sql + " WHERE model = ?", (model,)
        return {(m, int(v)): int(n) for m, v, n in self.connection().execute(sql, args)}

    def predicted_versions(self, model: str | None = None) -> set[tuple[str, int]]:
        """Model versions with served rows still kept."""
        sql, args = "SELECT DISTINCT model, version FROM served", ()
        if model is not None:
            sql, args = sql + " WHERE model = ?", (model,)
        return {(m, int(v)) for m, v in self.connection().execute(sql, args)}

    def drift_counts(
        self, since_minute: int, model: str | None = None
    ) -> dict[tuple[str, int], dict[str, dict[str, int]]]:
        """Live counts since a minute: {(model, version): {feature: {bin: n}}}."""
        sql = "SELECT model, version, feature, bin, SUM(count) FROM drift_counts WHERE minute >= ?"
        args: tuple[Any, ...] = (since_minute,)
        if model is not None:
            sql, args = sql + " AND model = ?", (*args, model)
        sql += " GROUP BY model, version, feature, bin"
        found: dict[tuple[str, int], dict[str, dict[str, int]]] = {}
        for m, v, feature, bin_, n in self.connection().execute(sql, args):
            found.setdefault((m, int(v)), {}).setdefault(feature, {})[bin_] = int(n)
        return found

    # -- experiments ----------------------------------------------------------------

    def write_experiments(
        self,
        counts: dict[tuple[str, str, str, int, int], tuple[int, int]],
        requests: list[tuple[str, str, str, str, int, bool, float, float]],
    ) -> None:
        """Answers of experiment variants {(experiment, model, variant, version, bucket):
        (requests, errors)} and the requests themselves (model, request_id, experiment,
        variant, version, ok, seconds, time), in one transaction."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO experiment_counts"
                " (experiment, model, variant, version, bucket, requests, errors)"
                " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,"
                " value ->> 5, value ->> 6 FROM json_each(?) WHERE true"
                " ON CONFLICT (experiment, variant, version, bucket)"
                " DO UPDATE SET requests = requests + excluded.requests,"
                " errors = errors + excluded.errors",
                (_batch_json([(*key, *n) for key, n in counts.items()]),),
            )
            if not requests:
                return
            conn.execute(
                "INSERT OR REPLACE INTO experiment_requests"
                " (model, request_id, experiment, variant, version, ok, seconds, time)"
                " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,"
                " value ->> 5, value ->> 6, value ->> 7 FROM json_each(?)",
                (_batch_json(requests),),
            )
            conn.execute(
                "DELETE FROM experiment_requests"
                " WHERE seq <= (SELECT MAX(seq) FROM experiment_requests) - ?",
                (self.prediction_retention,),
            )

    def experiment_counts(self, experiment: str) -> list[tuple[str, int, int, int, int]]:
        """(variant, version, bucket, requests, errors) rows of one experiment."""
        rows = self.connection().execute(
            "SELECT variant, version, bucket, requests, errors FROM experiment_counts"
            " WHERE experiment = ?",
            (experiment,),
        )
        return [(v, int(ver), int(b), int(n), int(e)) for v, ver, b, n, e in rows]

    def experiment_quality(
        self, experiment: str | None = None
    ) -> list[tuple[str, str, str, int, int, int, float, float]]:
        """(experiment, model, variant, version, labelled, correct, abs error sum, squared
        error sum) of the labelled rows of one experiment's requests (all experiments'
        when None) that are still kept."""
        sql, args = _EXPERIMENT_QUALITY, ()
        if experiment is not None:
            sql, args = sql + " WHERE e.experiment = ?", (experiment,)
        sql += " GROUP BY e.experiment, e.model, e.variant, e.version"
        return [
            (x, m, v, int(ver), int(n), int(c or 0), float(a), float(q))
            for x, m, v, ver, n, c, a, q in self.connection().execute(sql, args)
        ]
