"""The per-process flush timer of the monitoring writers, across a fork."""

from __future__ import annotations

import os
import threading
import time

from service.config import Settings
from service.monitoring import live
from service.monitoring.flusher import ProcessFlusher
from tests.support import eventually


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

    def exit_code() -> tuple[int] | None:
        done, status = os.waitpid(child, os.WNOHANG)
        return (os.waitstatus_to_exitcode(status),) if done else None

    try:
        (code,) = eventually(exit_code, timeout=10, interval=0.02, message="the forked child hung")
    except AssertionError:
        os.kill(child, 9)
        os.waitpid(child, 0)
        raise
    return code


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
    before = set(threading.enumerate())
    writer.flusher.start()
    (timer,) = set(threading.enumerate()) - before
    eventually(lambda: writer.flushes >= 3, timeout=5, interval=0.02, message="3 flushes")
    writer.flusher.stop()
    timer.join(timeout=5)  # a flush under way ends first
    assert not timer.is_alive()
    stopped_at = writer.flushes
    time.sleep(0.2)  # four intervals pass: what is under test is that nothing happens in them
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
