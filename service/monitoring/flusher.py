"""A timer per process that flushes what a writer buffers off the request path.

Threads do not survive Gunicorn's fork, so a writer starts its timer in each process
that buffers (the first time it buffers there); the timer calls the writer's flush every
``interval`` seconds, and the flush runs once more at exit.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable


class ProcessFlusher:
    def __init__(self, flush: Callable[[], object], interval: float, name: str):
        self._flush = flush
        self._interval = interval
        self._name = name
        self._stop = threading.Event()
        self._atexit = False

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
