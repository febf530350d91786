"""The WSGI middleware: authenticate each request, then label it or refuse it."""

from __future__ import annotations

import logging
import typing as t
import urllib.parse
from collections.abc import Iterable, Sequence

from ._checks import integer
from .counters import DEFAULT_STORAGE, CounterStorage
from .errors import (
    ApiKeyError,
    BadRequestError,
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
from .rules import AccessRule, RuleTable, Verdict
from .throttle import FailureThrottle
from .usage import UsageSink, UsageWriter

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .backend import KeyBackend

logger = logging.getLogger("apikey_middleware")

#: Where the principal of an authenticated request goes, unless told otherwise.
PRINCIPAL_ENVIRON_KEY = "apikey.principal"
#: Where the reason a key was refused goes, with ``required=False``.
ERROR_ENVIRON_KEY = "apikey.error"

# Headers with which clients ask an app to treat a request as another
# method; an app that honours one must not get past a rule for it.
_OVERRIDE_HEADERS = ("HTTP_X_HTTP_METHOD_OVERRIDE", "HTTP_X_HTTP_METHOD", "HTTP_X_METHOD_OVERRIDE")


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


def _adding_headers(start_response: StartResponse, extra: list[tuple[str, str]]) -> StartResponse:
    """``start_response`` that adds ``extra`` to the app's headers, replacing
    any of the same names."""
    names = {name.lower() for name, _ in extra}

    def start(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
        kept = [(name, value) for name, value in headers if name.lower() not in names]
        return start_response(status, [*kept, *extra], exc_info)

    return t.cast("StartResponse", start)


def _status_code(status: str) -> int:
    try:
        return int(status.split(" ", 1)[0])
    except ValueError:
        return 0


class ApiKeyMiddleware:
    """Require an API key (``Authorization: Bearer <key>``) on a WSGI app.

    .. warning::
        The middleware guards only the paths the app is reached by through
        it. ``rules`` and ``public`` are matched against ``PATH_INFO``: keep
        them in step with the app's own routes.

    :param app: the WSGI application to guard.
    :param store: the key store that resolves keys: a
        :class:`~apikey_middleware.store.SQLAlchemyKeyStore`, or any
        :class:`~apikey_middleware.backend.KeyBackend`.
    :param rules: ``(methods, path, scopes)`` entries; the first whose
        methods and Werkzeug rule path match decides the scopes a request
        needs. A path no rule matches needs a valid key and no scope. A rule
        also matches the path with or without a trailing slash or with
        doubled slashes, so a variant spelling is never less guarded. Or a
        :class:`~apikey_middleware.rules.RuleTable` (then ``public`` must be
        empty): subclass it to judge requests another way.
    :param public: Werkzeug rule paths that pass without a key (and without
        a principal), matched strictly. Paths with dot segments or
        double-encoded separators are never public: they get 400.
    :param required: ``False`` lets requests without a valid key through
        too, with no principal and the reason at ``environ["apikey.error"]``
        (an :class:`~apikey_middleware.errors.ApiKeyError`).
    :param key_types: the key types accepted; another type is forbidden.
    :param environ_key: where the
        :class:`~apikey_middleware.principal.Principal` goes in the environ.
    :param hide_credentials: remove ``Authorization`` before the app runs.
    :param preflight: let CORS preflight requests (``OPTIONS`` with
        ``Origin`` and ``Access-Control-Request-Method``) through without a
        key. Off by default: an app that answers ``OPTIONS`` by path alone,
        or honours ``X-HTTP-Method-Override``, would serve them unguarded.
    :param log_usage: log every request that presents a known key id
        (refused ones too) to the store's usage log, in batches off the
        request thread. Call :meth:`close` at shutdown (it also runs at
        interpreter exit).
    :param usage_writer: a :class:`~apikey_middleware.usage.UsageWriter`
        with other buffer settings.
    :param retry_after: the ``Retry-After`` seconds of the 503 answered
        while the store cannot answer.
    :param throttle: a :class:`~apikey_middleware.throttle.FailureThrottle`:
        a client address with too many invalid keys in its window gets 429
        with ``Retry-After`` for them, while its valid keys still pass. Off
        by default, since behind a proxy every client has the proxy's
        address. One made without a storage of its own counts in
        ``rate_limit_storage`` when that is shared (Redis).
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

    .. code-block:: python

        app.wsgi_app = ApiKeyMiddleware(
            app.wsgi_app,
            SQLAlchemyKeyStore("sqlite:///apikeys.db"),
            rules=[("GET", "/v1/clients", "clients:read")],
            public=["/health"],
        )

    A request with ``X-HTTP-Method-Override`` (or ``X-HTTP-Method``,
    ``X-Method-Override``, or a ``_method`` query parameter) needs the
    scopes of both its method and the one it asks for.

    Override :meth:`authenticate` or :meth:`authorize` to change how a
    request is judged.
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: KeyBackend,
        *,
        rules: Iterable[AccessRule] | RuleTable = (),
        public: Iterable[str] = (),
        required: bool = True,
        key_types: Iterable[str] = KEY_TYPES,
        environ_key: str = PRINCIPAL_ENVIRON_KEY,
        hide_credentials: bool = False,
        preflight: bool = False,
        log_usage: bool = True,
        usage_writer: UsageWriter | None = None,
        throttle: FailureThrottle | None = None,
        retry_after: int = 5,
        default_rate_limit: str | None = None,
        rate_limit_storage: str | CounterStorage = DEFAULT_STORAGE,
    ) -> None:
        self.app = app
        self.store = store
        if isinstance(rules, RuleTable):
            if public:
                raise ValueError("give public paths to the RuleTable, not beside it")
            self.rules = rules
        else:
            self.rules = RuleTable(rules, public)
        self.required = required
        self.key_types = frozenset(key_types)
        if not self.key_types <= set(KEY_TYPES):
            raise ValueError(f"key_types must be among {KEY_TYPES}, not {sorted(self.key_types)!r}")
        if not isinstance(environ_key, str) or not environ_key:
            raise ValueError(f"environ_key must be a non-empty string, not {environ_key!r}")
        self.environ_key = environ_key
        self.hide_credentials = hide_credentials
        self.preflight = preflight
        self.retry_after = integer("retry_after", retry_after)
        if log_usage and usage_writer is None:
            if not callable(getattr(store, "record_usage", None)):
                raise ValueError(
                    "this key store keeps no usage log: give log_usage=False or a usage_writer"
                )
            usage_writer = UsageWriter(t.cast(UsageSink, store))
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
        return f"{type(self).__name__}({self.app!r}, {self.store!r})"

    def _needs(self, environ: WSGIEnvironment) -> tuple[str, ...] | Verdict:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        # Judged by the raw PATH_INFO, so a known path is not decoded again.
        raw_path = environ.get("PATH_INFO") or ""
        needs = self.rules.needs(method, raw_path)
        if not isinstance(needs, tuple):
            return needs
        overrides = [environ[header] for header in _OVERRIDE_HEADERS if header in environ]
        query = environ.get("QUERY_STRING")
        if query and "_method" in query:
            overrides += urllib.parse.parse_qs(query, keep_blank_values=True).get("_method", [])
        for override in overrides:
            other = self.rules.needs(override.strip().upper(), raw_path)
            if not isinstance(other, tuple):
                return Verdict.BAD_REQUEST
            needs = tuple(sorted({*needs, *other}))
        return needs

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

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        scopes = self._needs(environ)
        if scopes is Verdict.PUBLIC or (
            self.preflight
            and environ.get("REQUEST_METHOD") == "OPTIONS"
            and "HTTP_ORIGIN" in environ
            and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
            and scopes is not Verdict.BAD_REQUEST
        ):
            return self.app(environ, start_response)
        if scopes is Verdict.BAD_REQUEST:
            return self._refuse(BadRequestError(), None, environ, start_response)
        key_id = None
        try:
            principal = self.authenticate(environ)
            key_id = principal.key_id
            self.authorize(principal, scopes)
            quota = self.limit(principal)
        except ApiKeyError as error:
            if isinstance(error, RejectedKeyError):
                key_id = error.key_id
            if self.throttle is not None and isinstance(error, InvalidKeyError):
                over = self.throttle.attempt(environ.get("REMOTE_ADDR") or "")
                if over is not None:
                    error = TooManyRequestsError(over)
            return self._refuse(error, key_id, environ, start_response)
        except Exception:
            # A bug or an unforeseen fault: fail closed, but say so loudly.
            logger.exception("API key check failed unexpectedly, refusing the request")
            fault = ServiceUnavailableError(self.retry_after)
            return self._refuse(fault, None, environ, start_response)
        environ[self.environ_key] = principal
        return self._call_app(key_id, environ, start_response, quota=quota)

    def _refuse(
        self,
        error: ApiKeyError,
        key_id: str | None,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        if self.required:
            if key_id is not None:
                self._record(key_id, environ, error.status, accepted=False)
            return error(environ, start_response)
        environ[ERROR_ENVIRON_KEY] = error
        return self._call_app(key_id, environ, start_response, accepted=False)

    def _record(
        self, key_id: str, environ: WSGIEnvironment, status: int, *, accepted: bool
    ) -> None:
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

    def _call_app(
        self,
        key_id: str | None,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        *,
        accepted: bool = True,
        quota: Quota | None = None,
    ) -> Iterable[bytes]:
        if self.hide_credentials:
            environ.pop("HTTP_AUTHORIZATION", None)
        if quota is not None:
            start_response = _adding_headers(start_response, quota.headers())
        if key_id is None or self.usage is None:
            return self.app(environ, start_response)
        logged = False
        inner = start_response

        def logging_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
        ) -> t.Any:
            nonlocal logged
            if not logged:
                logged = True
                self._record(key_id, environ, _status_code(status), accepted=accepted)
            return inner(status, headers, exc_info)

        try:
            return self.app(environ, logging_start_response)
        except BaseException:
            if not logged:
                self._record(key_id, environ, 500, accepted=accepted)
            raise

    def flush(self) -> None:
        """Write buffered usage rows now."""
        if self.usage is not None:
            self.usage.flush()

    def close(self) -> None:
        """Flush and stop the usage writer, close a counter storage the
        middleware made; safe to call twice."""
        if self.usage is not None:
            self.usage.close()
        if self._owns_storage:
            self.rate_limiter.storage.close()
