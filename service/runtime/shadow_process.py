"""The shadow candidate's own process: it waits, predicts and compares away from the
worker.

Anything the worker does for a shadow besides handing the work over costs its requests:
a candidate computing in the worker holds the worker's GIL, and even a thread of the
worker that only waits on the candidate must take the GIL back each time it wakes, which
under load stalls a request for a scheduler time slice whenever the cores are busy
(measured: the primary's p99 2-3 times higher, docs/experiments/shadow.md). So each
worker that shadows starts one child process (lazily, at its first shadowed request;
``python -m service.runtime.shadow_process``, not a fork of the threaded worker) at the
lowest CPU priority (niceness 19: the CPU the requests leave). The worker
hands each piece of work over with one non-blocking write to a socket and reads the
child's answers without waiting, on its own requests (``service.runtime.shadow``); it
runs no thread for it.

The child resolves the candidate in the store, loads it as the service does (sha256,
signatures, golden replay) and keeps it, predicts from the primary's validated input and
compares with the primary's answer: it sends back only the figures. It exits when the
worker's end of the socket closes, so a worker that dies takes it along.

Both ends are this code, over a socket pair nothing else holds: messages are pickles.

Nothing here imports Flask.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
from typing import Any

log = logging.getLogger(__name__)

# Below every request of the host: the candidate gets the CPU the requests leave.
NICENESS = 19
# The bytes of work written but not yet taken by the child, at most: a child that cannot
# keep up sheds work (the caller drops it) instead of the worker holding inputs for it.
MAX_OUTBOX_BYTES = 8 << 20
_HEADER = struct.Struct("!Q")
_READ_SIZE = 1 << 16

# The child's answers: (kind, job id, ...).
LOADING = "loading"  # it is loading a version: the next answer may take a while
SAME = "same"  # the candidate is the version that answered: nothing to compare
DONE = "done"  # (DONE, id, error kind or None, version, rows, agreed, differences, seconds, why)


def frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class CandidateProcess:
    """The worker's end: one child, started on first use, never waited on.

    ``send`` queues a message and writes what the socket takes now; ``receive`` returns
    the answers that have arrived. Neither blocks: both are called on the request path.
    Not thread-safe: the caller holds a lock."""

    def __init__(self, settings: Any):
        self.settings = settings
        self._process: subprocess.Popen | None = None
        self._socket: socket.socket | None = None
        self._outbox = bytearray()
        self._inbox = bytearray()
        self._pid = os.getpid()
        self._killed: list[subprocess.Popen] = []
        # Bytes handed to send / written to the socket, since this child started: a
        # message is in the child's hands once ``written`` reaches its end.
        self.queued_bytes = 0
        self.written_bytes = 0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._socket is not None and self._pid == os.getpid()

    def send(self, message: Any) -> int | None:
        """Queue ``message`` and write what the socket takes; the byte offset at which the
        child has all of it, or None when too much is still unwritten (the caller drops
        the work). Raises OSError when the child cannot be started."""
        self._ensure()
        data = frame(message)
        if self._outbox and len(self._outbox) + len(data) > MAX_OUTBOX_BYTES:
            return None
        self._outbox += data
        self.queued_bytes += len(data)
        self.flush()
        return self.queued_bytes

    def flush(self) -> None:
        """Write what the socket takes of the queued bytes, without waiting."""
        while self._outbox and self.running:
            try:
                written = self._socket.send(self._outbox, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                raise
            del self._outbox[:written]
            self.written_bytes += written

    def receive(self) -> list[Any]:
        """The child's answers that have arrived, without waiting. Raises EOFError when
        the child has gone (the caller's unanswered work is lost)."""
        if not self.running:
            return []
        while True:
            try:
                chunk = self._socket.recv(_READ_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                self.close()
                raise EOFError(str(exc)) from exc
            if not chunk:
                self.close()
                raise EOFError("the shadow process exited")
            self._inbox += chunk
        messages = []
        while len(self._inbox) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._inbox)
            end = _HEADER.size + size
            if len(self._inbox) < end:
                break
            messages.append(pickle.loads(self._inbox[_HEADER.size : end]))
            del self._inbox[:end]
        return messages

    def wait(self, timeout: float) -> None:
        """Block until the child has written or ``timeout`` passed (tests, benchmarks and
        the synchronous ``ShadowRunner.run``; never a request)."""
        if self.running:
            select.select([self._socket], [], [], max(timeout, 0.0))

    def _ensure(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's process is not ours
            self._forget()
            self._pid = os.getpid()
        self._reap()
        if self._socket is not None:
            return
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
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        self._socket = mine
        self.queued_bytes = self.written_bytes = 0
        self.starts += 1
        self._outbox += frame(self.settings)
        self.queued_bytes = len(self._outbox)

    def close(self) -> None:
        """Kill the child (never waiting for it: it is reaped later) and forget its work."""
        process, sock = self._process, self._socket
        self._process = self._socket = None
        self._outbox.clear()
        self._inbox.clear()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if process is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                process.kill()
            self._killed.append(process)
        self._reap()

    def _reap(self) -> None:
        self._killed = [process for process in self._killed if process.poll() is None]

    def _forget(self) -> None:
        self._process = self._socket = None
        self._outbox.clear()
        self._inbox.clear()
        self._killed = []


# -- the child -------------------------------------------------------------------------


def _lower_priority() -> None:
    # Not SCHED_IDLE: on a host busy with requests all the time it would get next to no
    # CPU (a weight of 3 to a request's 1024), and never start or answer; niceness 19 is
    # a weight of 15, behind every request, yet it gets through.
    with contextlib.suppress(OSError):
        os.nice(NICENESS)


def _read_message(sock: socket.socket) -> Any:
    header = _read_exactly(sock, _HEADER.size)
    (size,) = _HEADER.unpack(header)
    return pickle.loads(_read_exactly(sock, size))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = sock.recv_into(view[got:], size - got)
        if not count:
            raise EOFError
        got += count
    return bytes(buffer)


def main(argv: list[str]) -> int:
    """The child: answer the worker's shadow work until the worker goes away."""
    sock = socket.socket(fileno=int(argv[1]))
    _lower_priority()
    from service.runtime.shadow import run_candidate
    from service.store import ModelStore

    try:
        settings = _read_message(sock)
    except (EOFError, OSError):
        return 0
    store = ModelStore.from_settings(settings)
    models: dict[tuple[str, int], Any] = {}

    def tell(message: Any) -> None:
        sock.sendall(frame(message))

    while True:
        try:
            job = _read_message(sock)
            tell(run_candidate(store, settings, models, job, tell))
        except (EOFError, OSError):
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
