"""The per-process flush timer of the monitoring writers, across a fork."""

from __future__ import annotations

import os
import threading
import time

import pytest

from service.config import Settings
from service.monitoring import live
from service.monitoring.flusher import ProcessFlusher


def run_in_child(action) -> int:
    """Fork, run ``action`` in the child, and return its exit code (bounded in time)."""
    child = os.fork()
    if child == 0:
        code = 1
        try:
            action()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(child, 9)
    os.waitpid(child, 0)
    pytest.fail("the forked child hung")


class _Writer:
    def __init__(self):
        self.lock = threading.Lock()
        self.flushes = 0
        self.flusher = ProcessFlusher(self.flush, 0.05, "test-flusher", after_fork=self.reset)

    def flush(self):
        with self.lock:
            self.flushes += 1

    def reset(self):
        self.lock = threading.Lock()
        self.flushes = 0


def test_the_timer_flushes_every_interval_and_stops():
    writer = _Writer()
    writer.flusher.start()
    deadline = time.monotonic() + 5
    while writer.flushes < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.flushes >= 3
    writer.flusher.stop()
    time.sleep(0.2)
    stopped_at = writer.flushes
    time.sleep(0.2)
    assert writer.flushes == stopped_at


def test_a_child_forked_while_the_writer_held_its_lock_gets_a_fresh_one():
    writer = _Writer()
    writer.flush()

    def in_child():
        # Without after_fork the lock would still be held here, by a thread that is gone.
        assert writer.flushes == 0
        writer.flush()
        assert writer.flushes == 1

    with writer.lock:
        assert run_in_child(in_child) == 0
    assert writer.flushes == 1  # the parent's own count is its own


def test_the_prediction_writer_flushes_in_a_child_forked_mid_flush(tmp_path):
    monitor = live.Monitor(Settings.load(overrides={"state_dir": str(tmp_path / "state")}))
    try:
        with monitor._flush_lock:
            assert run_in_child(monitor.flush) == 0
    finally:
        monitor.stop()
