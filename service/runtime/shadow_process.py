"""The shadow candidate's own process: it computes away from the worker's GIL.

A candidate that computes inside the worker holds the worker's GIL while it does, and a
thread preempted while holding the GIL stalls the worker's requests for a scheduler time
slice (measured: the primary's p99 1.2-1.7 times higher under a 20 % shadow, see
docs/experiments/shadow.md). So each worker that shadows starts one child process
(lazily, at its first shadow run; ``python -m service.runtime.shadow_process``, not a
fork of the threaded worker) at the lowest CPU priority. The worker's shadow thread sends
it (model, version, validated input) and waits for the predictions with a timeout; a
child that overruns the timeout is killed (the timeout is real) and a new one starts at
the next run. The child loads versions from the store as the service does (sha256,
signatures, golden replay) and keeps them; it exits when the worker's end of the socket
closes, so a worker that dies takes it along.

Nothing here imports Flask.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

# Below every request of the host: the candidate gets the CPU the requests leave.
NICENESS = 19
START_TIMEOUT_SECONDS = 60.0
OK = "ok"
FAILED = "failed"
TIMED_OUT = "timeout"


class CandidateProcess:
    """The worker's end: one child, started on first use, restarted after a timeout."""

    def __init__(self, settings: Any):
        self.settings = settings
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._pid = os.getpid()
        self._fresh = True
        self.starts = 0

    def predict(
        self, name: str, version: int, model_input: Any, timeout: float
    ) -> tuple[str, Any, float]:
        """(OK, predictions, seconds), (FAILED, reason, seconds) or (TIMED_OUT, None, s).
        Raises OSError when the child cannot be started or talked to."""
        connection = self._ensure()
        started = time.perf_counter()
        try:
            connection.send((name, version, model_input))
            # A first load (unpickling, golden replay) happens in the child on first use.
            if not connection.poll(timeout + (START_TIMEOUT_SECONDS if self._fresh else 0.0)):
                self.close()
                return TIMED_OUT, None, time.perf_counter() - started
            status, value, seconds = connection.recv()
        except (EOFError, OSError, pickle.PicklingError) as exc:
            self.close()
            raise OSError(f"the shadow process failed: {exc}") from exc
        self._fresh = False
        return status, value, seconds

    def _ensure(self) -> Connection:
        if self._pid != os.getpid():  # a forked child: the parent's process is not ours
            self._process, self._connection, self._pid = None, None, os.getpid()
        if self._connection is not None and self._process is not None:
            if self._process.poll() is None:
                return self._connection
            self.close()
        mine, theirs = socket.socketpair()
        env = dict(os.environ)
        # The child unpickles what this process can import (estimators of other modules).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "service.runtime.shadow_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        finally:
            theirs.close()
        self._connection = Connection(mine.detach())
        self._connection.send(self.settings)
        self._fresh = True
        self.starts += 1
        return self._connection

    def close(self) -> None:
        connection, process = self._connection, self._process
        self._connection = self._process = None
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()
        if process is not None and self._pid == os.getpid():
            process.kill()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("shadow process %d did not exit", process.pid)


def main(argv: list[str]) -> int:
    """The child: serve (name, version, input) requests until the worker goes away."""
    connection = Connection(int(argv[1]))
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    from service.runtime.model import load
    from service.store import ModelStore

    settings = connection.recv()
    store = ModelStore.from_settings(settings)
    models: dict[tuple[str, int], Any] = {}
    while True:
        try:
            name, version, model_input = connection.recv()
        except (EOFError, OSError):
            return 0
        started = time.perf_counter()
        try:
            model = models.get((name, version))
            if model is None:
                model = models[(name, version)] = load(
                    store,
                    name,
                    version,
                    refuse_version_mismatch=settings.refuse_version_mismatch,
                    backend=settings.backend,
                )
                started = time.perf_counter()  # the load is not the candidate's latency
            predictions = model.predict_prepared(model_input, with_proba=False).predictions
            answer: tuple[str, Any, float] = (OK, predictions, time.perf_counter() - started)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).partition(chr(10))[0]}"
            answer = (FAILED, reason, time.perf_counter() - started)
        try:
            connection.send(answer)
        except (EOFError, OSError):
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
