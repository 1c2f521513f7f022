"""The shadow process: it takes the workers' shadow work, runs it on the candidate one
piece at a time, and stops a candidate that takes too long.

One per Gunicorn master (``start_host``, from when_ready), listening on a unix socket
the master made before it forked its workers, so they all connect to it and it outlives
every worker restart (``max_requests``): a worker that starts costs one ``connect``, not a
process. The master starts it again when it finds it gone, before it forks a worker
(``ensure_host``, from pre_fork), on the same socket. A process with no such master
starts one of its own (``service.runtime.shadow_process.ShadowLink``), which serves that
process alone and exits when its end closes.

It is two processes, both at the lowest CPU priority (niceness 19: the CPU the requests
leave), both started as ``python -m service.runtime.shadow_server``:

- this loop, which never imports numpy or the candidate: it reads the workers' work
  without unpickling it (``shadow_process.HEADER`` says which piece and its timeout),
  queues it in the order it came, gives the candidate one piece at a time and routes the
  answers back to the worker that sent it;
- the candidate (``--candidate``): it resolves the version in the store, loads it as the
  service does (sha256, signatures, golden replay), keeps it, predicts from the primary's
  validated input and compares (``service.runtime.shadow.run_candidate``).

So a timeout is real: the candidate still busy with one piece of work ``timeout``
seconds after it got it (plus ``LOAD_ALLOWANCE_SECONDS`` when it starts or loads a
version) is killed, the work recorded as a timeout, and a new candidate takes the next
piece. The work behind it is not lost.

Nothing here imports Flask.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from service.runtime import shadow_process
from service.runtime.shadow_process import READ_SIZE, spawn, split_frames

log = logging.getLogger(__name__)

# Below every request of the host: the candidate gets the CPU the requests leave. Not
# SCHED_IDLE: on a host busy with requests all the time it would get next to no CPU (a
# weight of 3 to a request's 1024), and never start or answer; niceness 19 is a weight
# of 15, behind every request, yet it gets through.
NICENESS = 19
# What a candidate may take on top of the timeout to start (a Python importing
# scikit-learn at that priority) or to load a version (unpickling, signature and
# golden-output checks) before it predicts.
LOAD_ALLOWANCE_SECONDS = 60.0
_LISTEN_BACKLOG = 128


# -- in the Gunicorn master ---------------------------------------------------------------


@dataclasses.dataclass
class _Host:
    listener: socket.socket
    settings: bytes
    process: subprocess.Popen | None = None


_host: _Host | None = None


def start_host(settings: Any) -> None:
    """Listen on a new unix socket (in the abstract namespace: nothing to clean up on
    disk; only processes of this user are served) and start the shadow process on it.
    Before the workers fork: they inherit the address."""
    global _host
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0model-service-shadow-{os.getpid()}-{os.urandom(6).hex()}")
    listener.listen(_LISTEN_BACKLOG)
    _host = _Host(listener, pickle.dumps(settings))
    shadow_process.host_address = listener.getsockname()
    ensure_host()


def ensure_host() -> None:
    """Start the master's shadow process when it is not running (it died, or was killed);
    the workers connect to the same socket."""
    host = _host
    if host is None or (host.process is not None and host.process.poll() is None):
        return
    fd = host.listener.fileno()
    host.process = spawn(["--listener", str(fd)], host.settings, pass_fds=(fd,))


def stop_host() -> None:
    host = _host
    if host is not None and host.process is not None and host.process.poll() is None:
        host.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            host.process.wait(5)


# -- the loop ------------------------------------------------------------------------------


class _Peer:
    """A worker's connection."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.socket = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.open = True

    def fileno(self) -> int:
        return self.socket.fileno()

    def tell(self, message: bytes) -> None:
        if self.open:
            self.outbox += message
            self.flush()

    def flush(self) -> None:
        while self.outbox and self.open:
            try:
                written = self.socket.send(self.outbox)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            del self.outbox[:written]

    def close(self) -> None:
        self.open = False
        self.outbox.clear()
        with contextlib.suppress(OSError):
            self.socket.close()


@dataclasses.dataclass
class _Work:
    peer: _Peer
    job_id: int
    timeout: float
    message: bytes


class _Candidate:
    """The candidate process and the piece of work it has, if any."""

    def __init__(self, settings: bytes):
        mine, theirs = socket.socketpair()
        try:
            self.process = spawn(
                ["--candidate", str(theirs.fileno())], settings, pass_fds=(theirs.fileno(),)
            )
        finally:
            theirs.close()
        self.socket = mine
        self.inbox = bytearray()
        self.answered = False  # whether it has answered once (it has started)
        self.work: _Work | None = None
        self.given = 0.0
        self.deadline = 0.0

    def fileno(self) -> int:
        return self.socket.fileno()

    def give(self, work: _Work) -> None:
        # Whole, blocking: a candidate with no work is waiting to read it.
        self.socket.sendall(work.message)
        self.work = work
        self.given = time.monotonic()
        allowance = 0.0 if self.answered else LOAD_ALLOWANCE_SECONDS
        self.deadline = self.given + work.timeout + allowance

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        with contextlib.suppress(OSError):
            self.socket.close()


class Server:
    """Serves the connections of a listener (the master's), or one connection (a
    process's own shadow process, which ends when that closes)."""

    def __init__(self, settings: bytes, *, listener: socket.socket | None = None):
        self.settings = settings
        self.listener = listener
        self.peers: list[_Peer] = []
        self.queue: collections.deque[_Work] = collections.deque()
        self.candidate: _Candidate | None = None

    def serve(self, connections: list[socket.socket] = ()) -> None:
        self.peers.extend(_Peer(sock) for sock in connections)
        try:
            while self.listener is not None or self.peers:
                self._step()
        finally:
            if self.candidate is not None:
                self.candidate.stop()

    def _step(self) -> None:
        self._dispatch()
        candidate = self.candidate
        wait = None
        if candidate is not None and candidate.work is not None:
            wait = max(candidate.deadline - time.monotonic(), 0.0)
        readers: list[Any] = [*self.peers, *([candidate] if candidate else [])]
        if self.listener is not None:
            readers.append(self.listener)
        writers = [peer for peer in self.peers if peer.outbox]
        readable, writable, _ = select.select(readers, writers, [], wait)
        for peer in writable:
            peer.flush()
        for ready in readable:
            if ready is self.listener:
                self._accept()
            elif ready is candidate:
                self._hear_candidate()
            else:
                self._read(ready)
        self._check_deadline()
        self.peers = [peer for peer in self.peers if peer.open]

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        if not _same_user(sock):
            sock.close()
            return
        self.peers.append(_Peer(sock))

    def _read(self, peer: _Peer) -> None:
        try:
            chunk = peer.socket.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the worker went: its work still queued is of no use to anyone
            peer.close()
            return
        peer.inbox += chunk
        for kind, job_id, timeout, message in split_frames(peer.inbox):
            if kind == shadow_process.WORK:
                self.queue.append(_Work(peer, job_id, timeout, message))

    def _dispatch(self) -> None:
        while self.queue and (self.candidate is None or self.candidate.work is None):
            work = self.queue.popleft()
            if not work.peer.open:
                continue
            try:
                if self.candidate is None:
                    self.candidate = _Candidate(self.settings)
                self.candidate.give(work)
            except OSError as exc:
                self._candidate_gone(work, f"the candidate process could not be given work: {exc}")

    def _hear_candidate(self) -> None:
        candidate = self.candidate
        try:
            chunk = candidate.socket.recv(READ_SIZE)
        except OSError:
            chunk = b""
        if not chunk:
            code = candidate.process.poll()
            self._candidate_gone(candidate.work, f"the candidate process exited ({code})")
            return
        candidate.inbox += chunk
        for kind, job_id, _, message in split_frames(candidate.inbox):
            work = candidate.work
            if work is None or job_id != work.job_id:
                continue
            if kind == shadow_process.LOADING:
                candidate.deadline = time.monotonic() + work.timeout + LOAD_ALLOWANCE_SECONDS
                continue
            candidate.answered = True
            candidate.work = None
            work.peer.tell(message)

    def _check_deadline(self) -> None:
        candidate = self.candidate
        if candidate is None or candidate.work is None:
            return
        now = time.monotonic()
        if now < candidate.deadline:
            return
        work = candidate.work
        seconds = now - candidate.given
        log.warning("shadow candidate still busy after %.1f s: stopped", seconds)
        candidate.stop()
        self.candidate = None
        timed_out = shadow_process.answer_frame(work.job_id, shadow_process.TIMEOUT, None, seconds)
        work.peer.tell(timed_out)

    def _candidate_gone(self, work: _Work | None, why: str) -> None:
        if self.candidate is not None:
            self.candidate.stop()
            self.candidate = None
        if work is not None:
            work.peer.tell(
                shadow_process.answer_frame(work.job_id, shadow_process.EXCEPTION, why=why)
            )


def _same_user(sock: socket.socket) -> bool:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    _, uid, _ = (int.from_bytes(creds[i : i + 4], sys.byteorder) for i in (0, 4, 8))
    return uid == os.getuid()


# -- the candidate ---------------------------------------------------------------------------


def serve_candidate(sock: socket.socket, settings: Any) -> None:
    """Run the work the loop gives, one piece at a time, until the loop goes away."""
    from service.runtime.shadow import run_candidate
    from service.store import ModelStore

    store = ModelStore.from_settings(settings)
    models: dict[tuple[str, int], Any] = {}
    inbox = bytearray()
    while True:
        try:
            chunk = sock.recv(READ_SIZE)
        except OSError:
            return
        if not chunk:
            return
        inbox += chunk
        for _, job_id, timeout, message in split_frames(inbox):
            job = shadow_process.payload(message)

            def loading(job_id=job_id):
                sock.sendall(shadow_process.frame(shadow_process.LOADING, job_id))

            sock.sendall(run_candidate(store, settings, models, job_id, job, timeout, loading))


# -- as a command -----------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    # A shadow process never outlives what started it, even one stuck in a prediction.
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.runtime.shadow_server")
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--listener", type=int, help="serve the connections of this socket")
    role.add_argument("--connection", type=int, help="serve this one connection")
    role.add_argument("--candidate", type=int, help="run the candidate on this socket")
    parser.add_argument("--parent", type=int, required=True)
    arguments = parser.parse_args(argv)
    _die_with_parent(arguments.parent)
    with contextlib.suppress(OSError):
        os.nice(NICENESS - os.nice(0))
    # A signal to the master's process group is for the master and its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = sys.stdin.buffer.read()
    if arguments.candidate is not None:
        serve_candidate(socket.socket(fileno=arguments.candidate), pickle.loads(settings))
    elif arguments.listener is not None:
        Server(settings, listener=socket.socket(fileno=arguments.listener)).serve()
    else:
        Server(settings).serve([socket.socket(fileno=arguments.connection)])
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    sys.exit(main())
