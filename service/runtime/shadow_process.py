"""A worker's link to the shadow process, and the messages both ends exchange.

Anything the worker does for a shadow besides handing the work over costs its requests:
a candidate computing in the worker holds the worker's GIL, and even a thread of the
worker that only waits on the candidate must take the GIL back each time it wakes, which
under load stalls a request for a scheduler time slice whenever the cores are busy
(measured: the primary's p99 2-3 times higher, docs/guides/experiments/shadow.md). And a
process per worker costs each worker (re)start a process to start beside it, which under
load showed as p99 spikes at every ``max_requests`` recycle. So the candidate computes in
one shadow process per Gunicorn master (``service.runtime.shadow_server``, started by the
master, which outlives its workers); the worker hands each piece of work over with one
non-blocking write to a unix socket and reads the answers without waiting, on its own
requests (``service.runtime.shadow``); it runs no thread for it.

A process with no such master (a test, a tool, the gRPC server) starts a shadow process
of its own, the same program, on its first shadowed request; it serves that process only
and exits when the process's end of the socket closes. So does a worker that cannot
reach its master's.

A message is a header — payload size, job id, kind, the job's timeout — and a pickle,
so the shadow process routes work and answers without unpickling the inputs. Both ends
are this code, and the socket accepts only processes of the same user.

Nothing here imports Flask (nor numpy: the shadow process's own loop reads this).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
from typing import Any

# The bytes of work written but not yet taken by the shadow process, at most: a process
# that cannot keep up sheds work (the caller drops it) instead of the worker holding
# inputs for it.
MAX_OUTBOX_BYTES = 8 << 20
# payload size, job id, kind, timeout in seconds (work only)
HEADER = struct.Struct("!QQBd")
READ_SIZE = 1 << 16

# Kinds of message. Worker -> shadow process: WORK. The candidate -> shadow process:
# LOADING (it is loading a version: the allowance for a load applies). Shadow process ->
# worker: SAME (the candidate is the version that answered: nothing to compare), and
# ANSWER, whose payload is (error kind or None, version, rows, agreed, differences,
# seconds, why).
WORK, LOADING, SAME, ANSWER = 1, 2, 3, 4

# The candidate's failures the shadow process itself finds (service.runtime.shadow has
# them all).
EXCEPTION = "exception"  # it raised, or its process died
TIMEOUT = "timeout"  # slower than the work's timeout


def frame(kind: int, job_id: int, payload: Any = None, timeout: float = 0.0) -> bytes:
    data = b"" if payload is None else pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data), job_id, kind, timeout) + data


def answer_frame(job_id: int, error: str, version: int | None = None, seconds=0.0, why=""):
    return frame(ANSWER, job_id, (error, version, 0, 0, None, seconds, why))


def split_frames(buffer: bytearray) -> list[tuple[int, int, float, bytes]]:
    """Take the whole messages off the front of ``buffer``: (kind, job id, timeout,
    the whole message as it came)."""
    messages = []
    while len(buffer) >= HEADER.size:
        size, job_id, kind, timeout = HEADER.unpack_from(buffer)
        end = HEADER.size + size
        if len(buffer) < end:
            break
        messages.append((kind, job_id, timeout, bytes(buffer[:end])))
        del buffer[:end]
    return messages


def payload(message: bytes) -> Any:
    return pickle.loads(memoryview(message)[HEADER.size :]) if len(message) > HEADER.size else None


# The master's shadow process, inherited by its workers (set in the master before it
# forks them: service.runtime.shadow_server.start_host).
host_address: str | None = None


class ShadowLink:
    """The worker's end: connected on first use, to the master's shadow process or, when
    there is none, to one of its own; never waited on.

    ``send`` queues a message and writes what the socket takes now; ``receive`` returns
    the answers that have arrived. Neither blocks: both are called on the request path.
    Not thread-safe: the caller holds a lock."""

    def __init__(self, settings: Any):
        self.settings = settings
        self._own: subprocess.Popen | None = None  # a shadow process of this process's
        self._socket: socket.socket | None = None
        self._outbox = bytearray()
        self._inbox = bytearray()
        self._pid = os.getpid()

    @property
    def own_pid(self) -> int | None:
        """The shadow process this process started, if it serves this process alone."""
        return self._own.pid if self._own is not None and self._own.poll() is None else None

    @property
    def connected(self) -> bool:
        return self._socket is not None and self._pid == os.getpid()

    def send(self, job_id: int, work: Any, timeout: float) -> bool:
        """Queue a piece of work and write what the socket takes; False when too much is
        still unwritten (the caller drops the work). Raises OSError when no shadow process
        can be reached."""
        self._ensure()
        data = frame(WORK, job_id, work, timeout)
        if self._outbox and len(self._outbox) + len(data) > MAX_OUTBOX_BYTES:
            return False
        self._outbox += data
        self.flush()
        return True

    def flush(self) -> None:
        """Write what the socket takes of the queued bytes, without waiting."""
        while self._outbox and self.connected:
            try:
                written = self._socket.send(self._outbox, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                raise
            del self._outbox[:written]

    def receive(self) -> list[tuple[int, int, bytes]]:
        """The answers that have arrived, without waiting: (kind, job id, message).
        Raises EOFError when the shadow process has gone (the caller's unanswered work is
        lost)."""
        if not self.connected:
            return []
        while True:
            try:
                chunk = self._socket.recv(READ_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                self.close()
                raise EOFError(str(exc)) from exc
            if not chunk:
                self.close()
                raise EOFError("the shadow process closed the connection")
            self._inbox += chunk
        return [(kind, job_id, data) for kind, job_id, _, data in split_frames(self._inbox)]

    def wait(self, timeout: float) -> None:
        """Block until the shadow process has written or ``timeout`` passed (tests,
        benchmarks and the synchronous ``ShadowRunner.run``; never a request)."""
        if self.connected:
            select.select([self._socket], [], [], max(timeout, 0.0))

    def _ensure(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's connection is not ours
            self._forget()
            self._pid = os.getpid()
        if self._socket is not None:
            return
        if host_address is not None and self._own is None:
            try:
                self._socket = _connect(host_address)
            except OSError:
                pass  # the master's is not there: one of this process's own below
            else:
                return
        self._start_own()

    def _start_own(self) -> None:
        if self._own is not None and self._own.poll() is None:
            self._own.kill()
        mine, theirs = socket.socketpair()
        try:
            self._own = spawn(
                ["--connection", str(theirs.fileno())],
                pickle.dumps(self.settings),
                pass_fds=(theirs.fileno(),),
            )
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        self._socket = mine

    def close(self) -> None:
        """Forget the connection and the work on it (never waiting: a shadow process of
        this process's own exits when its end closes, and is reaped later)."""
        sock, self._socket = self._socket, None
        self._outbox.clear()
        self._inbox.clear()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if self._own is not None:
            self._own.poll()

    def _forget(self) -> None:
        self._socket = self._own = None
        self._outbox.clear()
        self._inbox.clear()


def spawn(arguments: list[str], settings: bytes, pass_fds: tuple[int, ...]) -> subprocess.Popen:
    """Start ``python -m service.runtime.shadow_server`` with these arguments, its parent
    named (it dies with it), and the pickled settings on its standard input."""
    env = dict(os.environ)
    # The candidate unpickles what this process can import (estimators of other modules).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    parent = str(os.getpid())
    process = subprocess.Popen(
        [sys.executable, "-m", "service.runtime.shadow_server", *arguments, "--parent", parent],
        pass_fds=pass_fds,
        stdin=subprocess.PIPE,
        env=env,
        close_fds=True,
    )
    with process.stdin as stdin:
        stdin.write(settings)
    return process


def _connect(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Not blocking: a listener whose backlog is full refuses at once rather than
        # holding the request.
        sock.setblocking(False)
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock
