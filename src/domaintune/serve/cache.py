"""An exact-match response cache for greedy requests, bounded in entries (least recently used
goes first).

Only deterministic requests are cached: temperature 0, so the same served model, prompt ids and
settings always give the same tokens. The key is built from the token ids, not the raw text, so
two bodies that render to the same prompt share an entry. Off by default (`cache_size=0`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class ResponseCache:
    """A thread-safe LRU map from request keys to finished results.

    Args:
        max_entries: most entries kept; 0 disables the cache (every `get` misses, `put` is a no-op).

    Example:
        >>> cache = ResponseCache(1)
        >>> cache.put("a", 1); cache.put("b", 2)
        >>> cache.get("a"), cache.get("b")
        (None, 2)
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any:
        """The cached value for `key` (now most recently used), or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Store `value`, evicting the least recently used entry beyond `max_entries`."""
        if self.max_entries == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
