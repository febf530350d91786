"""How many keys an account may make from the dashboard, and how fast.

Every key made (Generate New Key, Rotate) costs one bcrypt on a request
worker, about 0.3 s of CPU at cost 12: an account posting the form in a loop
would starve every other client of the same workers. So each account has a
rate of key creations, counted in a :class:`~apikey_middleware.counters.CounterStorage`
(the one the app's rate limits use, when the Flask extension is set up: with
Redis the rate holds across processes and hosts), and a most of active keys.
Both are checked before anything is hashed.
"""

from __future__ import annotations

import math
import threading
import typing as t
from dataclasses import dataclass, field

from flask import current_app

from .._checks import integer
from .._time import utcnow
from ..counters import CounterStorage
from ..ratelimit import check_rate_limit, parse_rate_limit

if t.TYPE_CHECKING:
    from limits import RateLimitItem

    from ..store import SQLAlchemyKeyStore

#: Keys an account may make (or rotate) unless told otherwise: a burst of 5,
#: 30 an hour, so that one account spends at most about 10 s of bcrypt an hour.
DEFAULT_KEY_RATE = "5/minute;30/hour"
#: Active keys an account may hold unless told otherwise.
DEFAULT_MAX_KEYS = 50


def check_max_keys(value: object) -> int | None:
    """``value`` if it is a positive integer or ``None`` (no bound)."""
    if value is None:
        return None
    return integer("max_keys", value)


@dataclass
class MintBounds:
    """The rate and the most active keys of one dashboard's accounts."""

    #: Whose counters these are (the blueprint's name).
    name: str
    #: Key creations per account, in the ``limits`` notation (``None``: no rate).
    rate: str | None
    #: Active keys per account (``None``: no bound).
    max_keys: int | None
    #: Where creations are counted; ``None``: the app's rate limit storage.
    counters: CounterStorage | None = None
    _own: CounterStorage | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.rate = check_rate_limit("key_rate", self.rate)
        self.max_keys = check_max_keys(self.max_keys)

    def storage(self) -> CounterStorage:
        """The given storage, else the app's rate limit storage, else one in memory."""
        if self.counters is not None:
            return self.counters
        state = current_app.extensions.get("apikeys")
        guard = getattr(state, "guard", None)
        storage = getattr(getattr(guard, "rate_limiter", None), "storage", None)
        if isinstance(storage, CounterStorage):
            return storage
        with self._lock:
            if self._own is None:
                self._own = CounterStorage("memory://")
            return self._own

    def at_most(self, store: SQLAlchemyKeyStore, owner: str) -> bool:
        """Whether ``owner`` holds :attr:`max_keys` active keys already."""
        if self.max_keys is None:
            return False
        now = utcnow()
        records = store.list_keys(owner=owner)
        return sum(record.state(now) == "active" for record in records) >= self.max_keys

    def waiting(self, owner: str) -> int | None:
        """If ``owner`` is over the rate already, the seconds until it is
        not; read without a hit, so a refused flood costs one read each."""
        if self.rate is None:
            return None
        items = parse_rate_limit(self.rate)
        storage = self.storage()
        waits = [
            count.resets_in
            for item in items
            for count in [storage.get(self._name(item, owner), item.get_expiry())]
            if count.hits >= item.amount
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    def _name(self, item: RateLimitItem, owner: str) -> str:
        return item.key_for("dashboard", self.name, owner)

    def spend(self, owner: str) -> int | None:
        """Count one key made by ``owner``; if that is over the rate, the
        seconds until it is allowed again (nothing is to be made then)."""
        if self.rate is None:
            return None
        items = parse_rate_limit(self.rate)
        counts = self.storage().hit(
            [(self._name(item, owner), item.get_expiry()) for item in items]
        )
        over = [
            count.resets_in
            for item, count in zip(items, counts, strict=True)
            if count.hits > item.amount
        ]
        return max(1, math.ceil(max(over))) if over else None


def wait_text(seconds: int) -> str:
    """``seconds`` as a person reads a wait: "1 minute", "20 seconds"."""
    if seconds >= 5400:
        return f"{round(seconds / 3600)} hours"
    if seconds >= 90:
        return f"{round(seconds / 60)} minutes"
    if seconds >= 60:
        return "1 minute"
    return "1 second" if seconds == 1 else f"{seconds} seconds"
