"""A timer per process that flushes what a writer buffers off the request path.

Threads do not survive Gunicorn's fork, so a writer starts its timer in each process
that buffers (the first time it buffers there); the timer calls the writer's flush every
``interval`` seconds, and the flush runs once more at exit. In a forked child the
writer's ``after_fork`` runs first: the parent's timer may have held the writer's locks
at the moment of the fork, and what the parent buffered is the parent's to write.

The timer holds its writer weakly: a writer nobody holds any more (an app that went away:
tests and embedding programs build many) is not kept alive by its timer, whose thread
then ends.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any


class ProcessFlusher:
    def __init__(
        self,
        flush: Callable[[], object],
        interval: float,
        name: str,
        after_fork: Callable[[], object] | None = None,
    ):
        self._flush = _weakly(flush)
        self._interval = interval
        self._name = name
        self._after_fork = _weakly(after_fork) if after_fork is not None else None
        self._stop = threading.Event()
        self._atexit = False
        _flushers.add(self)

    def start(self) -> None:
        """Start this process's timer; the writer calls it once per process."""
        self._stop = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(self._stop,), name=self._name, daemon=True
        )
        thread.start()
        if not self._atexit:
            atexit.register(self._flush_now)
            self._atexit = True

    def stop(self) -> None:
        self._stop.set()

    def _flush_now(self) -> bool:
        """Flush; whether the writer is still there."""
        flush = self._flush()
        if flush is None:
            return False
        flush()
        return True

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval):
            if not self._flush_now():
                return

    def after_fork(self) -> None:
        after_fork = self._after_fork() if self._after_fork is not None else None
        if after_fork is not None:
            after_fork()


def _weakly(function: Callable[[], Any]) -> Callable[[], Callable[[], Any] | None]:
    """What gives ``function`` back while it lives: weakly for a bound method."""
    if hasattr(function, "__self__"):
        return weakref.WeakMethod(function)  # type: ignore[arg-type]
    return lambda: function


class BufferedWriter:
    """A writer whose request path only appends to a bounded buffer of this process, and
    whose flush (its own: what it writes differs) empties the buffer off that path.

    Past ``max_buffered`` items (a writer that cannot keep up) the oldest are dropped and
    counted in ``dropped`` rather than letting memory grow.
    """

    def _init_buffer(self, interval: float, name: str, max_buffered: int) -> None:
        self.dropped = 0
        self._max_buffered = max_buffered
        self._buffer: collections.deque[Any] = collections.deque()
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._flusher = ProcessFlusher(self.flush, interval, name, after_fork=self._after_fork)

    def flush(self) -> int:
        raise NotImplementedError

    def _append(self, item: Any) -> None:
        if self._pid != os.getpid():
            self._start()
        if len(self._buffer) >= self._max_buffered:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(item)

    def _take_buffered(self) -> list[Any]:
        """Empty the buffer; the caller holds ``_flush_lock``."""
        items = []
        while True:
            try:
                items.append(self._buffer.popleft())
            except IndexError:
                return items

    def _start(self) -> None:
        with self._start_lock:
            pid = os.getpid()
            if self._pid == pid:
                return
            self._flusher.start()
            self._pid = pid

    def _after_fork(self) -> None:
        # A forked child starts empty (what the parent buffered is the parent's), with
        # locks of its own: the parent's writer may have held one at the fork.
        self._buffer = collections.deque()
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pid = None

    def stop(self) -> None:
        self._flusher.stop()
        self.flush()
        self._pid = None


_flushers: weakref.WeakSet[ProcessFlusher] = weakref.WeakSet()


def _reset_in_child() -> None:
    for flusher in list(_flushers):
        flusher.after_fork()


os.register_at_fork(after_in_child=_reset_in_child)
