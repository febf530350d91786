"""Judging one request's key: what the middleware and the Flask decorator share.

:class:`KeyGuard` holds everything a request that needs a key goes through,
wherever that need is decided: the store that resolves the key, the key
types accepted, the failed-attempt throttle, the usage log and the
``Retry-After`` of a store fault. :class:`~apikey_middleware.middleware.ApiKeyMiddleware`
is a guard that decides the need by path, for every request;
:func:`~apikey_middleware.flask.require_scopes` asks the app's guard only
for the views it decorates. Both therefore answer alike, byte for byte.
"""

from __future__ import annotations

import logging
import typing as t
from collections.abc import Iterable, Sequence
from datetime import timedelta

from ._checks import integer
from .counters import DEFAULT_STORAGE, CounterStorage
from .errors import (
    ApiKeyError,
    ForbiddenError,
    InvalidKeyError,
    MissingKeyError,
    RejectedKeyError,
    ServiceUnavailableError,
    StoreUnavailableError,
    TooManyRequestsError,
)
from .keys import KEY_TYPES
from .principal import Principal
from .ratelimit import Quota, RateLimiter
from .throttle import FailureThrottle
from .usage import UsageWriter
from .usage_records import UsageSink

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from .backend import KeyBackend

logger = logging.getLogger("apikey_middleware")


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer`` header value, or ``None``.

    The scheme is case-insensitive and followed by one or more spaces (RFC
    6750 §2.1); white space around the whole value is not part of it (RFC
    9110 §5.5). Everything else after the spaces is the token, to be checked
    as a key: Werkzeug's ``Authorization.from_header`` strips any Unicode
    space from it, which would let ``"<key>\\xa0"`` through.
    """
    if header.startswith("Bearer ") and header[7:8] not in (" ", "\t"):
        # The usual spelling, and the only one on the fast path.
        return header[7:].rstrip(" \t") or None
    scheme, _, token = header.strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.lstrip(" ") or None


class Judgement(t.NamedTuple):
    """What :meth:`KeyGuard.judge` found: a principal, or the refusal."""

    #: Who is calling, if the key was accepted.
    principal: Principal | None
    #: Why the request is refused, if it is.
    error: ApiKeyError | None
    #: The id of the presented key, where the store knows it (for the usage log).
    key_id: str | None
    #: Where the key stands against its rate limit, for the ``X-RateLimit-*``
    #: headers of the answer (``None``: no limit applies).
    quota: Quota | None = None


class KeyGuard:
    """Authenticate and authorize requests that need a key.

    :param store: the key store that resolves keys: a
        :class:`~apikey_middleware.store.SQLAlchemyKeyStore`, or any
        :class:`~apikey_middleware.backend.KeyBackend`.
    :param key_types: the key types accepted; another type is forbidden.
    :param log_usage: log every request that presents a known key id
        (refused ones too) to the store's usage log, in batches off the
        request thread. Call :meth:`close` at shutdown (it also runs at
        interpreter exit).
    :param usage_writer: a :class:`~apikey_middleware.usage.UsageWriter`
        with other buffer settings.
    :param usage_retention: how long usage is kept (a ``timedelta``): the
        usage writer deletes older usage when it starts and at most once an
        hour after (``None``: kept until ``apikey usage prune``). For a
        writer of your own, give it its ``retention``.
    :param throttle: a :class:`~apikey_middleware.throttle.FailureThrottle`:
        a client address with too many invalid keys in its window gets 429
        with ``Retry-After`` for them, while its valid keys still pass. One
        made without a storage of its own counts in ``rate_limit_storage``
        when that is shared (Redis).
    :param retry_after: the ``Retry-After`` seconds of the 503 answered
        while the store cannot answer.
    :param default_rate_limit: the rate limit of keys without one of their
        own, in the ``limits`` notation (``"100/minute"``,
        ``"10/second;1000/hour"``); ``None``: such keys are not limited. A
        key over its limit gets 429 ``RATE_LIMITED`` with ``Retry-After``;
        every response to a limited key carries ``X-RateLimit-Limit``,
        ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``.
    :param rate_limit_storage: where rate limits are counted: ``"memory://"``
        (each process on its own), a Redis URI (``"redis://host:6379/0"``,
        shared by every process and host that uses it), or a
        :class:`~apikey_middleware.counters.CounterStorage`. See
        :mod:`~apikey_middleware.ratelimit`.

    Override :meth:`authenticate` or :meth:`authorize` to change how a
    request is judged.
    """

    def __init__(
        self,
        store: KeyBackend,
        *,
        key_types: Iterable[str] = KEY_TYPES,
        log_usage: bool = True,
        usage_writer: UsageWriter | None = None,
        usage_retention: timedelta | None = None,
        throttle: FailureThrottle | None = None,
        retry_after: int = 5,
        default_rate_limit: str | None = None,
        rate_limit_storage: str | CounterStorage = DEFAULT_STORAGE,
    ) -> None:
        self.store = store
        self.key_types = frozenset(key_types)
        if not self.key_types <= set(KEY_TYPES):
            raise ValueError(f"key_types must be among {KEY_TYPES}, not {sorted(self.key_types)!r}")
        self.retry_after = integer("retry_after", retry_after)
        if log_usage and usage_writer is None:
            if not callable(getattr(store, "record_usage", None)):
                raise ValueError(
                    "this key store keeps no usage log: give log_usage=False or a usage_writer"
                )
            usage_writer = UsageWriter(t.cast(UsageSink, store), retention=usage_retention)
        elif usage_retention is not None:
            raise ValueError("give usage_retention to the usage writer, or no writer of your own")
        #: Where requests with a known key id are logged (``None``: nowhere).
        self.usage = usage_writer if log_usage else None
        self._owns_storage = not isinstance(rate_limit_storage, CounterStorage)
        #: Counts the requests of keys with a rate limit.
        self.rate_limiter = RateLimiter(rate_limit_storage, default=default_rate_limit)
        storage = self.rate_limiter.storage
        if throttle is not None and not throttle.storage_given and storage.shared:
            throttle = throttle.counting_in(storage)
        self.throttle = throttle

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store!r})"

    def authenticate(self, environ: WSGIEnvironment) -> Principal:
        """Return the principal of the request's key.

        :raises ApiKeyError: no key, or not a valid one, or the store could
            not answer (:class:`~apikey_middleware.errors.ServiceUnavailableError`).
        """
        token = bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
        if token is None:
            raise MissingKeyError
        try:
            return self.store.authenticate(token)
        except StoreUnavailableError:
            raise ServiceUnavailableError(self.retry_after) from None

    def authorize(self, principal: Principal, scopes: Sequence[str]) -> None:
        """Check that ``principal`` may make a request that needs ``scopes``.

        :raises ForbiddenError: a refused key type or a missing scope.
        """
        if principal.key_type not in self.key_types or (
            scopes and not principal.has_scopes(*scopes)
        ):
            raise ForbiddenError(scopes)

    def limit(self, principal: Principal) -> Quota | None:
        """Count a request of ``principal`` against its key's rate limit.

        :returns: where the key stands, for the ``X-RateLimit-*`` headers,
            or ``None`` if no limit applies to it.
        :raises ~apikey_middleware.errors.RateLimitedError: the key is over
            its limit.
        """
        return self.rate_limiter.check(principal.key_id, principal.rate_limit)

    def standing(self, principal: Principal) -> Quota | None:
        """Where ``principal``'s key stands against its rate limit, without
        counting: the headers of a refusal that spends nothing (403)."""
        return self.rate_limiter.peek(principal.key_id, principal.rate_limit)

    def judge(self, environ: WSGIEnvironment, scopes: Sequence[str]) -> Judgement:
        """Judge a request that needs a valid key holding ``scopes``.

        Authenticates, authorizes, counts the request against the key's rate
        limit; an invalid key counts against the client's address (if
        throttling), as it is refused, so concurrent guesses all count.
        Never raises: a fault of the store, or an unforeseen one, is a
        refusal (503), so nothing gets in by accident.
        """
        key_id = None
        try:
            principal = self.authenticate(environ)
            key_id = principal.key_id
            try:
                self.authorize(principal, scopes)
            except ForbiddenError as error:
                # Every answer to a limited key says where it stands (SPEC
                # 8); a refused request spends nothing: the count is read.
                return Judgement(None, error, key_id, self.standing(principal))
            quota = self.limit(principal)
        except ApiKeyError as error:
            if isinstance(error, RejectedKeyError):
                key_id = error.key_id
            if self.throttle is not None and isinstance(error, InvalidKeyError):
                over = self.throttle.attempt(environ.get("REMOTE_ADDR") or "")
                if over is not None:
                    error = TooManyRequestsError(over)
            return Judgement(None, error, key_id)
        except Exception:
            # A bug or an unforeseen fault: fail closed, but say so loudly.
            logger.exception("API key check failed unexpectedly, refusing the request")
            return Judgement(None, ServiceUnavailableError(self.retry_after), None)
        return Judgement(principal, None, key_id, quota)

    def record(self, key_id: str, environ: WSGIEnvironment, status: int, accepted: bool) -> None:
        """Log a request made with ``key_id`` and answered ``status``."""
        if self.usage is None:
            return
        self.usage.record(
            key_id,
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("PATH_INFO") or "/",
            status,
            environ.get("REMOTE_ADDR"),
            accepted,
        )

    def flush(self) -> None:
        """Write buffered usage rows now."""
        if self.usage is not None:
            self.usage.flush()

    def close(self) -> None:
        """Flush and stop the usage writer, close a counter storage the
        guard made; safe to call twice."""
        if self.usage is not None:
            self.usage.close()
        if self._owns_storage:
            self.rate_limiter.storage.close()
