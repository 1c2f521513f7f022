"""The shadow candidate's own process: it waits, predicts and compares away from the
worker.

Anything the worker does for a shadow besides handing the work over costs its requests:
a candidate computing in the worker holds the worker's GIL, and even a thread of the
worker that only waits on the candidate must take the GIL back each time it wakes, which
under load stalls a request for a scheduler time slice whenever the cores are busy
(measured: the primary's p99 2-3 times higher, docs/guides/experiments/shadow.md). So each
worker that shadows has one child process at the lowest CPU priority (niceness 19: the
CPU the requests leave). A Gunicorn worker started while a shadow runs forks it at once,
before it runs any thread (``shadow.prestart``, from post_fork): the fork has everything
imported. Otherwise it starts at the first shadowed request as
``python -m service.runtime.shadow_process`` (not a fork of a worker that runs threads),
which imports scikit-learn and the rest at that low priority. The worker
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
import signal
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

    def fork_now(self) -> None:
        """Start the child now as a fork of this process: it has everything imported, so
        it costs a fork, not a Python starting and importing scikit-learn at low priority
        (seconds of CPU at every worker restart). Only while this process runs no other
        thread (a Gunicorn worker's post_fork): the fork of a threaded process may inherit
        locks held by threads it does not have."""
        self.close()
        self._forget()
        self._pid = os.getpid()
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the child
            mine.close()
            code = 1
            try:
                _forked_child(theirs, self.settings)
                code = 0
            finally:
                # Not Python's exit: the fork shares the worker's native runtimes (the
                # onnxruntime thread it lacks, see deploy/gunicorn.conf.py worker_exit).
                os._exit(code)
        theirs.close()
        self._process = _Forked(pid)
        self._socket = mine
        self.queued_bytes = self.written_bytes = 0
        self.starts += 1

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


class _Forked:
    """A child from ``fork_now``, with what ``CandidateProcess`` asks of a Popen."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


# -- the child -------------------------------------------------------------------------


def _forked_child(sock: socket.socket, settings: Any) -> None:
    # The worker's signal handlers are not this process's: the defaults, and SIGKILL when
    # the worker dies (a candidate stuck in a prediction would not see the socket close).
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    for number in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH):
        signal.signal(number, signal.SIG_DFL)
    _die_with_parent()
    serve(sock, settings)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


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


def serve(sock: socket.socket, settings: Any) -> None:
    """Answer the worker's shadow work until the worker goes away."""
    _lower_priority()
    from service.runtime.shadow import run_candidate
    from service.store import ModelStore

    store = ModelStore.from_settings(settings)
    models: dict[tuple[str, int], Any] = {}

    def tell(message: Any) -> None:
        sock.sendall(frame(message))

    while True:
        try:
            job = _read_message(sock)
            tell(run_candidate(store, settings, models, job, tell))
        except (EOFError, OSError):
            return


def main(argv: list[str]) -> int:
    """The child started as a command: its settings come first on the socket."""
    sock = socket.socket(fileno=int(argv[1]))
    try:
        settings = _read_message(sock)
    except (EOFError, OSError):
        return 0
    serve(sock, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
