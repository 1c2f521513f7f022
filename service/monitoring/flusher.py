"""A timer per process that flushes what a writer buffers off the request path.

Threads do not survive Gunicorn's fork, so a writer starts its timer in each process
that buffers (the first time it buffers there); the timer calls the writer's flush every
``interval`` seconds, and the flush runs once more at exit. In a forked child the
writer's ``after_fork`` runs first: the parent's timer may have held the writer's locks
at the moment of the fork, and what the parent buffered is the parent's to write.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable


class ProcessFlusher:
    def __init__(
        self,
        flush: Callable[[], object],
        interval: float,
        name: str,
        after_fork: Callable[[], object] | None = None,
    ):
        self._flush = flush
        self._interval = interval
        self._name = name
        self._after_fork = after_fork
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
            atexit.register(self._flush)
            self._atexit = True

    def stop(self) -> None:
        self._stop.set()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval):
            self._flush()


_flushers: weakref.WeakSet[ProcessFlusher] = weakref.WeakSet()


def _reset_in_child() -> None:
    for flusher in list(_flushers):
        if flusher._after_fork is not None:
            flusher._after_fork()


os.register_at_fork(after_in_child=_reset_in_child)
