"""A thread-safe, bounded holder for what the server keeps in memory between requests: loaded models keyed
by file, a run's out-of-distribution reference, a batch's predictions. Re-created when the version changes,
released when no session has used it for a while (or when there are too many), so per-user values do not
pile up in the server's memory (GPU memory included: onnxruntime frees a session's memory when it is dropped).
On the ground floor, so every layer that caches (export, evaluation, hosting) uses the same one.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["IdleCache"]

V = TypeVar("V")


class IdleCache(Generic[V]):
    def __init__(self, idle_s: Callable[[], float], max_entries: int = 16,
                 on_release: Callable[[V], None] | None = None):
        self._idle_s = idle_s
        self._max = max_entries
        self._on_release = on_release
        self._lock = threading.Lock()
        self._items: dict[Hashable, tuple[object, V, float]] = {}  # key -> (version, value, last used)

    def get(self, key: Hashable, version: object, make: Callable[[], V]) -> V:
        """The value for ``key`` at ``version`` (made now when absent or of another version).

        ``make`` runs outside the lock, so one slow value (a batch of predictions) does not hold up
        every other session; two sessions making the same value at once both make it, the later one is kept.
        """
        released: list[V] = []
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] == version:
                self._items[key] = (version, hit[1], time.monotonic())
                return hit[1]
        value = make()
        with self._lock:
            old = self._items.get(key)
            if old is not None and old[1] is not value:
                released.append(old[1])
            self._items[key] = (version, value, time.monotonic())
            released += self._evict_locked()
        self._release(released)
        return value

    def release_idle(self) -> int:
        """Drop what has been idle too long; how many were released."""
        with self._lock:
            released = self._evict_locked()
        self._release(released)
        return len(released)

    def clear(self) -> None:
        with self._lock:
            released = [v for _, v, _ in self._items.values()]
            self._items.clear()
        self._release(released)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def _evict_locked(self) -> list[V]:
        now, idle_s = time.monotonic(), self._idle_s()
        gone = [k for k, (_, _, used) in self._items.items() if now - used > idle_s]
        by_age = sorted((k for k in self._items if k not in gone), key=lambda k: self._items[k][2])
        gone += by_age[: max(0, len(self._items) - len(gone) - self._max)]
        return [self._items.pop(k)[1] for k in gone]

    def _release(self, values: list[V]) -> None:
        if self._on_release is not None:
            for value in values:
                self._on_release(value)
