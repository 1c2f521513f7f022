"""Give a worker's freed heap back to the operating system after large requests.

A 1,000-row request allocates megabytes (the parsed rows, arrays, the answer) that are
freed when it ends, but glibc keeps freed memory inside the process for reuse, so a
worker stays at the high-water mark of its largest requests. ``malloc_trim(0)`` hands
the free pages back. It takes a few milliseconds, so it runs at most once per interval,
only when a large body came in since the last trim, and after an answer has gone out
(Gunicorn's post_request hook in deploy/gunicorn.conf.py): the first request once the
interval has passed trims what a burst of large ones left. On a C library without it
(musl), nothing is trimmed.

"Large" is far below what the request allocates: 1,000 rows of a four-feature model are a
96 KB JSON body (32 KB as binary tensors) and leave ~12 MiB of freed heap behind, while
a single row's body stays under 1 KB. At a 256 KiB threshold such requests never armed
the trim and a worker kept ~10 MiB after its first few hundred of them (`make soak`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import time
from collections.abc import Callable

LARGE_BODY_BYTES = 16 * 1024
MIN_INTERVAL_S = 5.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


class HeapTrimmer:
    def __init__(
        self,
        *,
        large_body_bytes: int = LARGE_BODY_BYTES,
        min_interval_s: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.large_body_bytes = large_body_bytes
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._malloc_trim = _malloc_trim()
        self._last = -math.inf
        self._pending = False
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._malloc_trim is not None

    def after_request(self, content_length: str | int | None) -> bool:
        """Note a large body; trim once one was seen since the last trim and the last
        trim is old enough (so also after a small request that follows a burst of
        large ones). Returns whether it trimmed."""
        if self._malloc_trim is None:
            return False
        try:
            size = int(content_length or 0)
        except ValueError:
            size = 0
        if size >= self.large_body_bytes:
            self._pending = True
        if not self._pending:
            return False
        now = self._clock()
        if now - self._last < self.min_interval_s:
            return False
        self._last = now
        self._pending = False
        self._malloc_trim(0)
        self.trims += 1
        return True


_worker_trimmer: HeapTrimmer | None = None


def after_request(content_length: str | int | None) -> bool:
    """The process's own trimmer (each Gunicorn worker gets its own state at fork)."""
    global _worker_trimmer
    if _worker_trimmer is None:
        _worker_trimmer = HeapTrimmer()
    return _worker_trimmer.after_request(content_length)
