"""Small per-worker caches of rendered pages and documents, kept in the app's extensions."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from flask import current_app


class LRUCache:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def app_cache(extension: str, size: int) -> LRUCache:
    """The running app's cache under ``extension``, made on first use."""
    return current_app.extensions.setdefault(extension, LRUCache(size))
