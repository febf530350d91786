"""Failed-attempt throttling: a client address that keeps guessing gets 429.

Each process counts on its own, in memory: behind ``N`` processes a client
can make up to ``N * limit`` failed attempts per window before all of them
answer 429. The count is per ``REMOTE_ADDR``; behind a reverse proxy, set the
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
    """Answer 429 to a client address whose attempts keep failing.

    Each request that presents a key counts as an attempt from its address
    when it arrives, so concurrent guesses count at once; one that turns
    out valid (or refused for another reason than its key) is taken back.
    Once more than ``limit`` attempts are counted in a window, the
    address's invalid keys get 429 with ``Retry-After`` instead of 401
    until the window ends. Its valid keys are still accepted: requests from
    a throttled address are checked as cheaply as any (nothing that cannot
    be a key reaches the database, no wrong secret reaches bcrypt), so
    other clients' failures behind a shared address never shut a valid key
    out. A window opens at an address's first attempt and lasts ``window``
    seconds.

    :param limit: failed attempts allowed per window.
    :param window: the window's length in seconds.
    :param max_addresses: how many addresses are tracked at once; the least
        recently seen are forgotten first, so memory stays bounded.
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
        # address -> [window start, attempts counted in it]
        self._attempts: LRUCache[str, list[float]] = LRUCache(max_addresses)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FailureThrottle(limit={self.limit}, window={self.window})"

    def __len__(self) -> int:
        return len(self._attempts)

    def _wait(self, start: float, now: float) -> int:
        return max(1, math.ceil(start + self.window - now))

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address``'s failures are answered 401 again, or
        ``None`` if they are now."""
        now = self._clock()
        entry = self._attempts.get(address)
        if entry is None or entry[1] < self.limit or now - entry[0] >= self.window:
            return None
        return self._wait(entry[0], now)

    def attempt(self, address: str) -> int | None:
        """Count an attempt from ``address`` as it arrives; if more than
        ``limit`` are counted in its window, the seconds left in it."""
        now = self._clock()
        with self._lock:
            entry = self._attempts.get(address)
            if entry is None or now - entry[0] >= self.window:
                self._attempts.set(address, [now, 1.0])
                entry = [now, 1.0]
            else:
                entry[1] += 1
            return self._wait(entry[0], now) if entry[1] > self.limit else None

    def succeeded(self, address: str) -> None:
        """Take back an attempt that was not a failed guess."""
        with self._lock:
            entry = self._attempts.get(address)
            if entry is not None and entry[1] > 0:
                entry[1] -= 1
