"""Failed-attempt throttling: a client address that keeps guessing gets 429.

Failures are counted in a :class:`~apikey_middleware.counters.CounterStorage`:
in this process's memory by default (behind ``N`` processes a client then
has up to ``N * limit`` failures per window), or in Redis, shared by every
process and host that uses it, so the limit holds for the whole service.
The count is per ``REMOTE_ADDR``; behind a reverse proxy, set the client's
address with Werkzeug's ``ProxyFix`` first, or every client shares the
proxy's address and count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ._checks import integer, number
from .counters import CounterStorage

# Client addresses are at most 45 characters (IPv6); whatever a proxy
# forwards beyond that names no one and must not make long storage keys.
_MAX_ADDRESS = 64


class FailureThrottle:
    """Answer 429 to a client address whose keys keep failing.

    Each request whose key is invalid counts as one failure of its address,
    in one atomic step that also says how many the window holds, so
    concurrent guesses each count and never more than ``limit`` of them are
    answered 401 in a window. Past ``limit``, the address's invalid keys get
    429 with ``Retry-After`` instead of 401 until the window ends. Its valid
    keys are still accepted and are never counted: requests from a
    throttled address are checked as cheaply as any (nothing that cannot be
    a key reaches the database, no wrong secret reaches bcrypt), so other
    clients' failures behind a shared address never shut a valid key out. A
    window opens at an address's first failure and lasts ``window`` seconds
    (whole seconds in Redis).

    :param limit: failed attempts allowed per window.
    :param window: the window's length in seconds.
    :param storage: where failures are counted: a
        :class:`~apikey_middleware.counters.CounterStorage` or its URI.
        ``None``: this process's memory, unless the
        :class:`~apikey_middleware.middleware.ApiKeyMiddleware` it is given
        to counts rate limits in a shared storage, which it then uses too.
    :param max_addresses: how many addresses are tracked in memory at once;
        the least recently seen are forgotten first, so memory stays bounded.
    :param clock: seconds, monotonic (for tests), for counts kept in memory.
    """

    def __init__(
        self,
        limit: int = 20,
        window: float = 60.0,
        *,
        storage: CounterStorage | str | None = None,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = integer("throttle limit", limit)
        self.window = number("throttle window", window)
        integer("max_addresses", max_addresses)
        #: Whether the storage was chosen for this throttle (not the default).
        self.storage_given = storage is not None
        if not isinstance(storage, CounterStorage):
            storage = CounterStorage(
                storage or "memory://", max_counters=max_addresses, clock=clock
            )
        self.storage = storage
        self._max_addresses = max_addresses
        self._clock = clock

    def __repr__(self) -> str:
        return f"FailureThrottle(limit={self.limit}, window={self.window}, {self.storage!r})"

    def __len__(self) -> int:
        """How many addresses this process tracks in memory."""
        return len(self.storage)

    def counting_in(self, storage: CounterStorage) -> FailureThrottle:
        """The same throttle, counting in ``storage``."""
        return FailureThrottle(
            self.limit,
            self.window,
            storage=storage,
            max_addresses=self._max_addresses,
            clock=self._clock,
        )

    def _name(self, address: str) -> str:
        return f"throttle/{address[:_MAX_ADDRESS]}/{self.limit}/{self.window:g}"

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address``'s failures are answered 401 again, or
        ``None`` if they are now."""
        count = self.storage.get(self._name(address), self.window)
        return max(1, math.ceil(count.resets_in)) if count.hits >= self.limit else None

    def attempt(self, address: str) -> int | None:
        """Count a failed attempt from ``address``; if more than ``limit``
        are now counted in its window, the seconds left in it."""
        (count,) = self.storage.hit([(self._name(address), self.window)])
        return max(1, math.ceil(count.resets_in)) if count.hits > self.limit else None
