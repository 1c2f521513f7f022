"""Promote and roll back under concurrent traffic: no request fails, and every worker
serves the new version within 2 seconds, without a restart."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

from service.store import ModelStore
from tests.support import IRIS, IRIS_ROW, eventually

pytestmark = pytest.mark.integration

SWITCH_DEADLINE_SECONDS = 2.0
CLIENT_THREADS = 4
# Answers past a switch's deadline that show it done (4 clients give ~50 a second here).
SETTLED_ANSWERS = 20


class Traffic:
    """Clients posting predictions until stopped (bounded by a hard time limit)."""

    def __init__(self, url: str, limit_seconds: float = 60.0):
        self.url = url
        self.limit = limit_seconds
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.samples: list[tuple[float, int | None, int]] = []  # (time, version, status)
        self.threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(CLIENT_THREADS)
        ]

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        with requests.Session() as session:
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                try:
                    response = session.post(self.url, json={"instances": [IRIS_ROW]}, timeout=10)
                    version = response.json().get("version") if response.ok else None
                    status = response.status_code
                except requests.RequestException:
                    version, status = None, -1
                with self.lock:
                    self.samples.append((time.monotonic(), version, status))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def since(self, moment: float) -> list[tuple[float, int | None, int]]:
        with self.lock:
            return [s for s in self.samples if s[0] >= moment]


def publish_copy(store: ModelStore, name: str, description: str) -> int:
    """A new version of NAME with the same estimator: told apart only by its number."""
    meta = store.metadata(name, 1)
    meta["description"] = description
    pickle_bytes = (store.layout.version_dir(name, 1) / "model.pkl").read_bytes()
    return store.publish(name, pickle_bytes, meta)


def _lateness(traffic: Traffic, switched_at: float, until: float, wanted: int) -> str:
    """Where the answers of the wrong version fell after a switch, to tell a slow switch
    from one that never happened."""
    late = [t - switched_at for t, v, _ in traffic.since(switched_at) if t < until and v != wanted]
    return (
        f"{len(late)} answers not of version {wanted} after the switch, the last "
        f"{max(late, default=0):.2f} s after it (deadline {SWITCH_DEADLINE_SECONDS} s)"
    )


def test_promote_and_rollback_under_traffic(stack):
    store = ModelStore(stack.store)
    new_version = publish_copy(store, IRIS, "second version, for the swap test")
    workers = sorted(stack.worker_pids())
    url = f"{stack.url}/v1/models/{IRIS}/predict"

    def settled(since: float):
        """enough answers after the switch's deadline"""
        return len(traffic.since(since + SWITCH_DEADLINE_SECONDS)) >= SETTLED_ANSWERS

    with Traffic(url) as traffic:
        eventually(lambda: traffic.since(0), message="traffic flowing")
        # The deadline counts from the moment the change is in the store: writing it
        # (fsync of aliases.yaml and its history) can itself take a while on a busy disk.
        store.promote(IRIS, new_version, reason="hot swap test")
        promoted_at = time.monotonic()
        eventually(lambda: settled(promoted_at), message="answers after the promotion settled")
        store.rollback(IRIS, reason="hot swap test")
        rolled_back_at = time.monotonic()
        eventually(lambda: settled(rolled_back_at), message="answers after the rollback settled")
        ended_at = time.monotonic()

    statuses = Counter(status for _, _, status in traffic.since(0))
    assert set(statuses) == {200}, f"failed requests during the swaps: {statuses}"
    assert sum(statuses.values()) > 50

    settled_new = [
        v for t, v, _ in traffic.since(promoted_at + SWITCH_DEADLINE_SECONDS) if t < rolled_back_at
    ]
    settled_old = [
        v for t, v, _ in traffic.since(rolled_back_at + SWITCH_DEADLINE_SECONDS) if t < ended_at
    ]
    assert settled_new and set(settled_new) == {new_version}, _lateness(
        traffic, promoted_at, rolled_back_at, new_version
    )
    assert settled_old and set(settled_old) == {1}, _lateness(traffic, rolled_back_at, ended_at, 1)
    # No worker was restarted to get there.
    assert sorted(stack.worker_pids()) == workers


def test_explicit_versions_are_served_side_by_side(stack):
    store = ModelStore(stack.store)
    version = publish_copy(store, IRIS, "served by number only")
    with requests.Session() as session:
        for _ in range(6):  # enough to reach both workers
            by_number = session.post(
                f"{stack.url}/v1/models/{IRIS}@{version}/predict", json={"instances": [IRIS_ROW]}
            )
            assert by_number.status_code == 200
            assert by_number.json()["version"] == version
        default = session.post(
            f"{stack.url}/v1/models/{IRIS}/predict", json={"instances": [IRIS_ROW]}
        )
        assert default.json()["version"] == store.aliases(IRIS)["production"]
