"""Bounded prediction load for the fleet tests: a few threads posting one body to one URL
(the balancer's address only), until stopped, a request cap or a time cap, whichever comes
first. Every answer is counted: its status, and the host that served it (X-Served-By); a
``check`` may refuse a 200 answer's body (a wrong prediction for the version it names)."""

from __future__ import annotations

import collections
import http.client
import json
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from tests.support import eventually


class BoundedLoad:
    def __init__(
        self,
        url: str,
        body: dict,
        *,
        threads: int = 4,
        max_requests: int = 200_000,
        max_seconds: float = 300.0,
        rate: float = 60.0,
        headers: dict[str, str] | None = None,
        check: Callable[[dict], str | None] | None = None,
    ):
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port or 80, parts.path
        self.body = json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.threads = threads
        self.check = check
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        # Requests a second, all threads together: steady traffic that leaves the shared
        # cores to the fleet and the deploy under test (a saturating load would mostly
        # measure how slowly everything else then runs).
        self.interval = threads / rate
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self.sent = 0
        self.reconnects = 0
        self.failures: list[str] = []
        self.served_by: collections.Counter[str] = collections.Counter()
        self.versions: collections.Counter[int] = collections.Counter()

    def __enter__(self) -> BoundedLoad:
        self.started = time.monotonic()
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"load-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def wait_for(self, requests: int, timeout: float = 60.0) -> None:
        """Until at least ``requests`` more answers are in (load is flowing)."""
        target = self.answered + requests
        eventually(
            lambda: self.answered >= target,
            timeout,
            interval=0.05,
            message=f"load stalled: {target} answers",
        )

    def wait_done(self, timeout: float = 120.0) -> None:
        """Until every request of a load bounded by ``max_requests`` has its answer."""
        for worker in self._workers:
            worker.join(timeout)
        assert self.answered == self.sent == self.max_requests, (self.answered, self.sent)

    @property
    def answered(self) -> int:
        return sum(self.served_by.values()) + len(self.failures)

    def _run(self) -> None:
        connection = None
        deadline = self.started + self.max_seconds
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            next_at += self.interval
            pause = next_at - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                break
            with self._lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            try:
                connection, answer, data = self._post(connection)
                if answer.status != 200:
                    self._fail(f"{answer.status}: {data[:200]!r}")
                    continue
                answered = json.loads(data)
                problem = self.check(answered) if self.check is not None else None
                if problem:
                    self._fail(problem)
                    continue
                with self._lock:
                    self.served_by[answer.getheader("X-Served-By", "?")] += 1
                    self.versions[answered.get("version", 0)] += 1
            except (OSError, http.client.HTTPException) as exc:
                self._fail(f"{type(exc).__name__}: {exc}")
                if connection is not None:
                    connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def _post(self, connection):
        """One request. On a kept-alive connection that the balancer closed while it was idle
        (Nginx's old workers close theirs at a reload), the request never reached it: sent
        again once on a new connection, as HTTP clients do, and counted in ``reconnects``.
        Any other error, and any error on a new connection, is a failure."""
        reused = connection is not None
        try:
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
            connection.request("POST", self.path, self.body, self.headers)
            answer = connection.getresponse()
            return connection, answer, answer.read()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            connection.close()
            if not reused:
                raise
        with self._lock:
            self.reconnects += 1
        return self._post(None)

    def _fail(self, reason: str) -> None:
        with self._lock:
            self.failures.append(reason)
