"""Per-key rate limits, and the counters they share with the failed-attempt throttle.

A key's ``rate_limit`` is written in the notation of the ``limits`` library
(``"100/minute"``, ``"10/second;1000/hour"``) and parsed by it. The counters
live in a :class:`CounterStorage` chosen by URI, as in ``limits`` and
Flask-Limiter: ``memory://`` (this process only) or ``redis://...`` (shared
by every process and host that uses it, through ``limits``' Redis storage).

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

When the shared storage cannot be reached, or answers slower than
``timeout``, counting goes on in this process's memory (limited per
process, never a 500, never refused for it), the fault is logged once per
interval, and one request per ``retry_interval`` tries the storage again;
once it answers, counting is shared again.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
import typing as t
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._checks import integer, number
from ._lru import LRUCache
from .errors import RateLimitedError
from .keys import holds_key, shown_safely
from .schema import MAX_RATE_LIMIT_LENGTH

if t.TYPE_CHECKING:
    from limits import RateLimitItem

logger = logging.getLogger("apikey_middleware")

#: Where counters are kept unless told otherwise: this process's memory.
DEFAULT_STORAGE = "memory://"
#: The storage URI schemes understood besides ``memory``: ``limits``' Redis storage.
REDIS_SCHEMES = ("redis", "rediss", "redis+unix")
#: The most limits one key may have.
MAX_LIMITS = 8

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
        :data:`MAX_LIMITS` limits, or a limit that allows no request.
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
    return items


def _hide_password(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def storage_scheme(what: str, uri: object) -> str:
    """The scheme of a counter storage URI; a ``ValueError`` naming ``what``
    for one this package cannot count in."""
    if not isinstance(uri, str):
        raise ValueError(f"{what} must be a URI such as 'memory://' or 'redis://host:6379/0'")
    scheme = uri.partition("://")[0] if "://" in uri else ""
    if scheme != "memory" and scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"{what} must be memory:// or a redis:// URI, not {shown_safely(_hide_password(uri))}"
        )
    if scheme != "memory":
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ValueError(
                f"{what}: Redis needs the redis package: pip install 'apikey_middleware[redis]'"
            ) from None
    return scheme


class Count(t.NamedTuple):
    """A counter just after a hit."""

    #: The hits its window holds, this one included.
    hits: int
    #: Seconds until its window ends.
    resets_in: float


class _MemoryCounters:
    """Fixed windows in this process, the least recently hit forgotten past
    ``max_counters``: counters are named by client addresses too, which a
    flood may make endless."""

    def __init__(self, max_counters: int, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: LRUCache[str, list[float]] = LRUCache(max_counters)  # [start, hits]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._windows)

    def hit(self, windows: Sequence[tuple[str, float]], amount: int = 1) -> list[Count]:
        now = self._clock()
        counts = []
        with self._lock:
            for name, seconds in windows:
                entry = self._windows.get(name)
                if entry is None or now - entry[0] >= seconds:
                    entry = [now, 0.0]
                    self._windows.set(name, entry)
                entry[1] += amount
                counts.append(Count(int(entry[1]), entry[0] + seconds - now))
        return counts

    def get(self, name: str, seconds: float) -> Count:
        entry = self._windows.get(name)
        now = self._clock()
        if entry is None or now - entry[0] >= seconds:
            return Count(0, seconds)
        return Count(int(entry[1]), entry[0] + seconds - now)


class _RedisCounters:
    """``limits``' Redis storage, its counters hit in one pipeline."""

    def __init__(self, uri: str, prefix: str, timeout: float) -> None:
        import redis
        from limits.storage import RedisStorage
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Options in the URI's query (?socket_timeout=1) take precedence.
        # One retry at once, for a pooled connection that a restarted
        # server closed; none after a timeout, which must not double.
        options: dict[str, t.Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        }
        self.storage = RedisStorage(uri, key_prefix=prefix, **options)
        self.client = t.cast("redis.Redis", self.storage.get_connection())
        self._no_script = redis.exceptions.NoScriptError

    def hit(self, windows: Sequence[tuple[str, float]], amount: int = 1) -> list[Count]:
        storage = self.storage
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for name, seconds in windows:
                key = storage.prefixed_key(name)
                # limits' INCRBY-and-EXPIRE script, sent by digest: a Script
                # object would ask SCRIPT EXISTS first, a second round trip.
                pipe.evalsha(storage.lua_incr_expire.sha, 1, key, math.ceil(seconds), amount)
                pipe.pttl(key)
            try:
                replies = pipe.execute()
            except self._no_script:
                if attempt == 2:
                    raise
                # A restarted server has forgotten the script.
                self.client.script_load(storage.SCRIPT_INCR_EXPIRE)
                continue
            return [
                Count(int(replies[2 * n]), _seconds(replies[2 * n + 1], seconds))
                for n, (_, seconds) in enumerate(windows)
            ]
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, name: str, seconds: float) -> Count:
        key = self.storage.prefixed_key(name)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        hits, pttl = pipe.execute()
        return Count(int(hits or 0), _seconds(pttl, seconds))

    def close(self) -> None:
        self.client.close()


def _seconds(pttl: object, window: float) -> float:
    # -1: no expiry, -2: gone (expired between the two commands).
    return int(t.cast(int, pttl)) / 1000 if int(t.cast(int, pttl)) > 0 else math.ceil(window)


class CounterStorage:
    """Fixed-window counters in a storage given by URI.

    :param uri: ``"memory://"`` (this process), or a Redis URI for
        ``limits``' Redis storage (``redis://``, ``rediss://``,
        ``redis+unix://``; the ``redis`` extra), shared by every process and
        host that uses it. Connection options may go in its query, such as
        ``?socket_timeout=1``.
    :param prefix: what every Redis key of this storage starts with.
    :param timeout: seconds Redis may take to connect or answer before the
        request is counted in memory instead.
    :param retry_interval: seconds between tries of a storage that failed;
        meanwhile counting is per process, in memory.
    :param max_counters: counters kept in memory (in memory mode, and while
        Redis is away); the least recently hit are forgotten first.
    :param clock: seconds, monotonic, for the counters kept in memory (for
        tests).
    """

    #: Seconds between two log lines about the same outage.
    log_interval = 60.0

    def __init__(
        self,
        uri: str = DEFAULT_STORAGE,
        *,
        prefix: str = "apikey",
        timeout: float = 0.25,
        retry_interval: float = 5.0,
        max_counters: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        scheme = storage_scheme("rate limit storage", uri)
        self.uri = uri
        self.timeout = number("rate limit storage timeout", timeout)
        self.retry_interval = number("retry_interval", retry_interval)
        integer("max_counters", max_counters)
        self._memory = _MemoryCounters(max_counters, clock)
        self._shared = None if scheme == "memory" else _RedisCounters(uri, prefix, timeout)
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_try = 0.0
        self._logged_at = 0.0
        self._missed = 0

    def __repr__(self) -> str:
        return f"CounterStorage({_hide_password(self.uri)!r})"

    def __len__(self) -> int:
        """How many counters this process keeps in memory."""
        return len(self._memory)

    @property
    def shared(self) -> bool:
        """Whether counts go to a storage other processes share (Redis)."""
        return self._shared is not None

    @property
    def available(self) -> bool:
        """Whether that storage answered last time (while it does not,
        counts are kept in this process's memory)."""
        return self._down_since is None

    def hit(self, windows: Sequence[tuple[str, float]]) -> list[Count]:
        """Add one to each counter (a name and its window in seconds): one
        round trip to Redis, or, while it cannot answer, in memory."""
        shared = self._shared
        if shared is not None and self._may_try():
            try:
                counts = shared.hit(windows)
            except Exception as error:  # whatever the storage raised: count here
                self._failed(error)
            else:
                if self._down_since is not None:
                    self._recovered()
                return counts
        return self._memory.hit(windows)

    def get(self, name: str, seconds: float) -> Count:
        """A counter as it is, without a hit."""
        shared = self._shared
        if shared is not None and self._may_try():
            try:
                return shared.get(name, seconds)
            except Exception as error:  # whatever the storage raised: read here
                self._failed(error)
        return self._memory.get(name, seconds)

    def _may_try(self) -> bool:
        if self._down_since is None:
            return True
        now = time.monotonic()
        with self._lock:
            if now < self._next_try:
                self._missed += 1
                return False
            # This request tries; the others count in memory meanwhile.
            self._next_try = now + self.retry_interval
            return True

    def _failed(self, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = now
            self._next_try = now + self.retry_interval
            if not first and now - self._logged_at < self.log_interval:
                return
            self._logged_at = now
            down_for = now - t.cast(float, self._down_since)
        detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if first:
            logger.error(
                "rate limit storage %s unavailable (%s): counting in this process's memory,"
                " trying again every %.0f s",
                self,
                detail[:200],
                self.retry_interval,
            )
        else:
            logger.error(
                "rate limit storage %s still unavailable after %.0f s (%s): counting in memory",
                self,
                down_for,
                detail[:200],
            )

    def _recovered(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            down_for = time.monotonic() - self._down_since
            self._down_since = None
            missed, self._missed = self._missed, 0
        logger.warning(
            "rate limit storage %s answers again after %.0f s: counting is shared again"
            " (%d requests were counted in memory meanwhile)",
            self,
            down_for,
            missed,
        )

    def close(self) -> None:
        """Close the connections to the storage."""
        if self._shared is not None:
            self._shared.close()


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

    :param storage: a :class:`CounterStorage`, or its URI.
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
        now = time.time()
        quotas = [
            Quota(
                limit=item.amount,
                remaining=max(0, item.amount - count.hits),
                reset=math.ceil(now + count.resets_in),
                retry_after=max(1, math.ceil(count.resets_in)),
                allowed=count.hits <= item.amount,
            )
            for item, count in zip(items, counts, strict=True)
        ]
        refused = [quota for quota in quotas if not quota.allowed]
        if refused:
            # Free again only once every window it is over has ended.
            raise RateLimitedError(max(refused, key=lambda quota: quota.retry_after))
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
