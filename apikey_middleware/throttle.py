"""Failed-attempt throttling: a client address that keeps guessing is shut out.

Each process counts on its own, in memory: behind ``N`` processes a client
can make up to ``N * limit`` failed attempts per window before all of them
refuse it. The count is per ``REMOTE_ADDR``; behind a reverse proxy, set the
client's address with Werkzeug's ``ProxyFix`` first, or every client shares
the proxy's address and count.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from ._lru import LRUCache


class FailureThrottle:
    """Refuse a client address for the rest of a window once it has failed
    ``limit`` times within it.

    A window opens at an address's first failure and lasts ``window``
    seconds; when it is over the count starts again from zero. Only invalid
    keys count, not missing keys or missing scopes: a guess at a secret is
    what is being slowed.

    :param limit: failed attempts allowed per window.
    :param window: the window's length in seconds.
    :param max_addresses: how many addresses are tracked at once; the least
        recently failed are forgotten first, so memory stays bounded.
    :param clock: seconds, monotonic (for tests).
    """

    def __init__(
        self,
        limit: int = 20,
        window: float = 60.0,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"throttle limit must be a positive integer, not {limit!r}")
        if isinstance(window, bool) or not isinstance(window, int | float) or window <= 0:
            raise ValueError(f"throttle window must be a positive number, not {window!r}")
        self.limit = limit
        self.window = float(window)
        self._clock = clock
        # address -> [window start, failures in it]
        self._failures: LRUCache[str, list[float]] = LRUCache(max_addresses)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FailureThrottle(limit={self.limit}, window={self.window})"

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or ``None`` if it may now."""
        entry = self._failures.get(address)
        if entry is None or entry[1] < self.limit:
            return None
        left = entry[0] + self.window - self._clock()
        if left <= 0:
            return None
        return max(1, math.ceil(left))

    def failed(self, address: str) -> None:
        """Count a failed attempt from ``address``."""
        now = self._clock()
        with self._lock:
            entry = self._failures.get(address)
            if entry is None or now - entry[0] >= self.window:
                self._failures.set(address, [now, 1.0])
            else:
                entry[1] += 1
