"""Per-key rate limits, and the counters they share with the failed-attempt throttle.

A key's ``rate_limit`` is written in the notation of the ``limits`` library
(``"100/minute"``, ``"10/second;1000/hour"``) and parsed by it. The
counters live in a :class:`~apikey_middleware.counters.CounterStorage`
chosen by URI, as in ``limits`` and Flask-Limiter: ``memory://`` (this
process only) or ``redis://...`` (shared by every process and host that
uses it, through ``limits``' Redis storage).

The strategy is ``limits``' *fixed window*: a key's window for a limit
opens at its first request and lasts the limit's period; every request in
it adds one to a single counter. It is chosen over the moving window (a
timestamp per request: a ``1000/hour`` key keeps a list of a thousand) and
the sliding window counter (two counters, an approximate count, and its
``Reset`` needs a second script call) because one counter answers
everything the response needs at once: the count after this request is
what ``X-RateLimit-Remaining`` says, its time to live is
``X-RateLimit-Reset``. For Redis each request costs one round trip, all of
a key's limits included: ``limits``' own increment script and a ``PTTL``
per limit, in one pipeline. Its known weakness, a burst at a window's edge
(up to twice the limit across two windows), is bounded by giving a key a
short limit beside the long one (``"10/second;1000/hour"``).

When Redis cannot be reached, counting goes on in each process's memory
(see :mod:`~apikey_middleware.counters`).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import typing as t
from dataclasses import dataclass

from .counters import DEFAULT_STORAGE, Count, CounterStorage
from .errors import RateLimitedError
from .keys import holds_key, shown_safely
from .schema import MAX_RATE_LIMIT_LENGTH

if t.TYPE_CHECKING:
    from limits import RateLimitItem

logger = logging.getLogger("apikey_middleware")

#: The most limits one key may have.
MAX_LIMITS = 8
#: The longest window a limit may have: one year as ``limits`` counts it
#: (12 times 30 days). Redis refuses expiries past about 9.2e15 s, and a
#: counter meant to last longer than a year is a revocation in disguise.
MAX_PERIOD = 31_104_000
#: The most requests one window may allow: a billion, far more than any
#: window can be sent, so that headers and counters stay ordinary integers.
MAX_AMOUNT = 1_000_000_000

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_EXAMPLE = "such as '100/minute' or '10/second;1000/hour'"


def check_rate_limit(what: str, value: object) -> str | None:
    """``value`` stripped if it is a rate limit in the ``limits`` notation,
    ``None`` for ``None``; else a ``ValueError`` naming ``what``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string {_EXAMPLE}, not {type(value).__name__}")
    text = value.strip()
    if holds_key(text):
        raise ValueError(f"{what} must not hold an API key (the value is not shown)")
    if not text or len(text) > MAX_RATE_LIMIT_LENGTH or _CONTROL_RE.search(text):
        raise ValueError(
            f"{what} must be a rate limit {_EXAMPLE}, of at most {MAX_RATE_LIMIT_LENGTH} characters"
        )
    try:
        parse_rate_limit(text)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None
    return text


@functools.lru_cache(maxsize=1024)
def parse_rate_limit(text: str) -> tuple[RateLimitItem, ...]:
    """The limits of ``text``, parsed by ``limits`` (and remembered).

    :raises ValueError: not the ``limits`` notation, more than
        :data:`MAX_LIMITS` limits, a limit that allows no request or more
        than :data:`MAX_AMOUNT`, or a window longer than :data:`MAX_PERIOD`
        (a year).
    """
    # Imported here: importing limits takes about 0.1 s, which the command
    # line and apps without rate limits need not pay.
    import limits

    try:
        items = tuple(limits.parse_many(text))
    except ValueError:
        raise ValueError(f"{shown_safely(text)} is not a rate limit {_EXAMPLE}") from None
    if len(items) > MAX_LIMITS:
        raise ValueError(f"at most {MAX_LIMITS} limits per key, not {len(items)}")
    if any(item.amount < 1 for item in items):
        raise ValueError("a limit must allow at least one request (revoke a key to stop it)")
    if any(item.amount > MAX_AMOUNT for item in items):
        raise ValueError(f"a limit may allow at most {MAX_AMOUNT:,} requests per window")
    if any(item.get_expiry() > MAX_PERIOD for item in items):
        raise ValueError("a limit's window may be at most 1 year long")
    return items


@dataclass(frozen=True, slots=True)
class Quota:
    """Where a key stands against its tightest limit after a request."""

    #: Requests its window allows (``X-RateLimit-Limit``).
    limit: int
    #: Requests left in the window (``X-RateLimit-Remaining``).
    remaining: int
    #: When the window ends, in seconds since the epoch (``X-RateLimit-Reset``).
    reset: int
    #: Seconds until then, at least 1 (``Retry-After`` once refused).
    retry_after: int
    #: Whether this request fits in every one of the key's limits.
    allowed: bool

    def headers(self) -> list[tuple[str, str]]:
        """The ``X-RateLimit-*`` headers, as Flask-Limiter sends them."""
        return [
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", str(self.remaining)),
            ("X-RateLimit-Reset", str(self.reset)),
        ]


class RateLimiter:
    """Counts each accepted request of a key against the key's rate limit.

    :param storage: a :class:`~apikey_middleware.counters.CounterStorage`,
        or its URI.
    :param default: the limit of keys without one of their own (``None``:
        such keys are not limited).

    Every request that gets through authentication counts in each of its
    key's windows, the refused ones too; requests refused before (401, 403)
    do not.
    """

    def __init__(
        self, storage: CounterStorage | str = DEFAULT_STORAGE, *, default: str | None = None
    ) -> None:
        self.storage = storage if isinstance(storage, CounterStorage) else CounterStorage(storage)
        self.default = check_rate_limit("default_rate_limit", default)

    def __repr__(self) -> str:
        return f"RateLimiter({self.storage!r}, default={self.default!r})"

    def check(self, key_id: str, rate_limit: str | None) -> Quota | None:
        """Count a request of ``key_id``, whose own limit is ``rate_limit``.

        :returns: where the key stands, or ``None`` if no limit applies.
        :raises RateLimitedError: over one of its limits.
        """
        text = rate_limit or self.default
        if text is None:
            return None
        items = _items(text, self.default)
        if not items:
            return None
        counts = self.storage.hit(
            [(item.key_for("key", key_id), item.get_expiry()) for item in items]
        )
        quotas = _quotas(items, counts)
        refused = [quota for quota in quotas if not quota.allowed]
        if refused:
            # Free again only once every window it is over has ended.
            raise RateLimitedError(max(refused, key=lambda quota: quota.retry_after))
        return _tightest(quotas)

    def peek(self, key_id: str, rate_limit: str | None) -> Quota | None:
        """Where ``key_id`` stands, without counting a request: for the
        headers of an answer that spends nothing (a 403).

        :returns: ``None`` if no limit applies.
        """
        text = rate_limit or self.default
        items = () if text is None else _items(text, self.default)
        if not items:
            return None
        counts = [
            self.storage.get(item.key_for("key", key_id), item.get_expiry()) for item in items
        ]
        return _tightest(_quotas(items, counts))


def _quotas(items: t.Sequence[RateLimitItem], counts: t.Sequence[Count]) -> list[Quota]:
    now = time.time()
    return [
        Quota(
            limit=item.amount,
            remaining=max(0, item.amount - count.hits),
            reset=math.ceil(now + count.resets_in),
            retry_after=max(1, math.ceil(count.resets_in)),
            allowed=count.hits <= item.amount,
        )
        for item, count in zip(items, counts, strict=True)
    ]


def _tightest(quotas: list[Quota]) -> Quota:
    return min(quotas, key=lambda quota: (quota.remaining, quota.retry_after))


def _items(text: str, default: str | None) -> tuple[RateLimitItem, ...]:
    try:
        return parse_rate_limit(text)
    except ValueError:
        # Written to the database by hand: the default applies, said once.
        _warn_bad_limit(text)
        return () if default is None or default == text else parse_rate_limit(default)


@functools.lru_cache(maxsize=64)
def _warn_bad_limit(text: str) -> None:
    logger.error(
        "a key's rate limit %s is not valid: the default limit applies to it", shown_safely(text)
    )
