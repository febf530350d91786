"""A small thread-safe LRU mapping with a size limit."""

from __future__ import annotations

import threading
import typing as t
from collections import OrderedDict

from ._checks import integer

K = t.TypeVar("K")
V = t.TypeVar("V")


class LRUCache(t.Generic[K, V]):
    """Forgets the least recently used entry past ``maxsize``; 0 keeps nothing.

    Reads take no lock: a lookup and its move to the end are each atomic,
    and an entry evicted between the two is simply a miss.
    """

    __slots__ = ("_data", "_lock", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = integer("cache size", maxsize, low=0)
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        try:
            value = self._data[key]
            self._data.move_to_end(key)
        except KeyError:
            return None
        return value

    def set(self, key: K, value: V) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
