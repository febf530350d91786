"""Counters shared by rate limits and the failed-attempt throttle, in a storage given by URI.

:class:`CounterStorage` keeps fixed-window counters in this process's memory
(``memory://``) or in Redis through ``limits``' Redis storage
(``redis://...``), shared by every process and host that uses it. See
:mod:`~apikey_middleware.ratelimit` for the strategy and why.

When Redis cannot be reached, or answers slower than ``timeout``, counting
goes on in this process's memory (limited per process, never a 500), the
fault is logged once per interval, and one request per ``retry_interval``
tries Redis again; once it answers, counting is shared again. A command
Redis answers by refusing it (a ``ResponseError``) is not an outage: that
request alone is counted in memory, and the next one asks Redis again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import typing as t
import urllib.parse
from collections.abc import Callable, Sequence

from ._checks import integer, number
from ._lru import LRUCache
from .keys import shown_safely

logger = logging.getLogger("apikey_middleware")

#: Where counters are kept unless told otherwise: this process's memory.
DEFAULT_STORAGE = "memory://"
#: The storage URI schemes understood besides ``memory``: ``limits``' Redis storage.
REDIS_SCHEMES = ("redis", "rediss", "redis+unix")


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
                f"{what}: Redis needs the redis package (the package's redis extra, or"
                " pip install redis)"
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
        #: What Redis raises for a command it answered by refusing it.
        self.refused = redis.exceptions.ResponseError

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


def _detail(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200]


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
        self._refused_logged_at = 0.0
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
            except shared.refused as error:
                self._refused(error)
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
            except shared.refused as error:
                self._refused(error)
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

    def _refused(self, error: Exception) -> None:
        # Redis answered, so it is up: only this request's counters are
        # kept here. Said once per interval, whatever the cause.
        now = time.monotonic()
        with self._lock:
            if self._refused_logged_at and now - self._refused_logged_at < self.log_interval:
                return
            self._refused_logged_at = now
        logger.error(
            "rate limit storage %s refused a command (%s): that request was counted in this"
            " process's memory",
            self,
            _detail(error),
        )

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
        detail = _detail(error)
        if first:
            logger.error(
                "rate limit storage %s unavailable (%s): counting in this process's memory,"
                " trying again every %.0f s",
                self,
                detail,
                self.retry_interval,
            )
        else:
            logger.error(
                "rate limit storage %s still unavailable after %.0f s (%s): counting in memory",
                self,
                down_for,
                detail,
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
