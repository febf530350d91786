"""The WSGI middleware: authenticate each request, then label it or refuse it."""

from __future__ import annotations

import functools
import typing as t
import urllib.parse
from collections.abc import Iterable
from datetime import timedelta

from werkzeug.wsgi import ClosingIterator

from .counters import DEFAULT_STORAGE, CounterStorage
from .errors import ApiKeyError, BadRequestError
from .guard import KeyGuard
from .guard import bearer_token as bearer_token
from .keys import KEY_TYPES
from .ratelimit import Quota
from .rules import AccessRule, RuleTable, Verdict
from .throttle import FailureThrottle
from .usage import UsageWriter
from .usage_records import status_code

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .backend import KeyBackend

#: Where the principal of an authenticated request goes, unless told otherwise.
PRINCIPAL_ENVIRON_KEY = "apikey.principal"
#: Where the reason a key was refused goes, with ``required=False``.
ERROR_ENVIRON_KEY = "apikey.error"

# Headers with which clients ask an app to treat a request as another
# method; an app that honours one must not get past a rule for it.
_OVERRIDE_HEADERS = ("HTTP_X_HTTP_METHOD_OVERRIDE", "HTTP_X_HTTP_METHOD", "HTTP_X_METHOD_OVERRIDE")
#: What an override may ask for: the methods of RFC 9110 and PATCH (RFC
#: 5789), in any case. Anything else, or more than one override, is 400
#: before the rule table is asked: each would cost a rule lookup (and a
#: place in its cache) with no key checked yet.
OVERRIDE_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
)
_LONGEST_METHOD = max(map(len, OVERRIDE_METHODS))


def _adding_headers(start_response: StartResponse, extra: list[tuple[str, str]]) -> StartResponse:
    """``start_response`` that adds ``extra`` to the app's headers, replacing
    any of the same names."""
    names = {name.lower() for name, _ in extra}

    def start(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
        kept = [(name, value) for name, value in headers if name.lower() not in names]
        return start_response(status, [*kept, *extra], exc_info)

    return t.cast("StartResponse", start)


def _query_overrides(query: str, most: int) -> list[str]:
    """The ``_method`` values of ``query``, as the app decodes them; no
    further than the one past ``most`` (which already makes a 400)."""
    found: list[str] = []
    for field in query.split("&"):
        name, _, value = field.partition("=")
        if "%" in name or "+" in name:
            name = urllib.parse.unquote_plus(name)
        if name == "_method":
            found.append(urllib.parse.unquote_plus(value))
            if len(found) > most:
                break
    return found


def _log_first(
    record: t.Callable[[str, str, str, int | str, str | None, bool], None],
    started: list[str],
    key_id: str,
    method: str,
    path: str,
    address: str | None,
    accepted: bool,
) -> None:
    """Log a request with the status its response started with, or 500
    (what the server answers) if it never started."""
    record(key_id, method, path, status_code(started[0]) if started else 500, address, accepted)


class ApiKeyMiddleware(KeyGuard):
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
        request thread. Call :meth:`~apikey_middleware.guard.KeyGuard.close`
        at shutdown (it also runs at interpreter exit).
    :param usage_writer: a :class:`~apikey_middleware.usage.UsageWriter`
        with other buffer settings.
    :param usage_retention: how long usage is kept (a ``timedelta``); the
        usage writer deletes older usage at most once an hour (``None``:
        kept until pruned).
    :param retry_after: the ``Retry-After`` seconds of the 503 answered
        while the store cannot answer.
    :param throttle: a :class:`~apikey_middleware.throttle.FailureThrottle`:
        a client address with too many invalid keys in its window gets 429
        with ``Retry-After`` for them, while its valid keys still pass. Off
        by default, since behind a proxy every client has the proxy's
        address. One made without a storage of its own counts in
        ``rate_limit_storage`` when that is shared (Redis).
    :param default_rate_limit: the rate limit of keys without one of their
        own (see :class:`~apikey_middleware.guard.KeyGuard`).
    :param rate_limit_storage: where rate limits are counted:
        ``"memory://"`` or a Redis URI (see
        :class:`~apikey_middleware.guard.KeyGuard`).

    .. code-block:: python

        app.wsgi_app = ApiKeyMiddleware(
            app.wsgi_app,
            SQLAlchemyKeyStore("sqlite:///apikeys.db"),
            rules=[("GET", "/v1/clients", "clients:read")],
            public=["/health"],
        )

    A request with ``X-HTTP-Method-Override`` (or ``X-HTTP-Method``,
    ``X-Method-Override``, or a ``_method`` query parameter) needs the
    scopes of both its method and the one it asks for. It may carry one
    override, naming a standard method (:data:`OVERRIDE_METHODS`, in any
    case); more than one, or any other value, is answered 400 before any
    key is checked.

    It is a :class:`~apikey_middleware.guard.KeyGuard` that decides by path
    what each request needs: override
    :meth:`~apikey_middleware.guard.KeyGuard.authenticate` or
    :meth:`~apikey_middleware.guard.KeyGuard.authorize` to change how a
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
        usage_retention: timedelta | None = None,
        throttle: FailureThrottle | None = None,
        retry_after: int = 5,
        default_rate_limit: str | None = None,
        rate_limit_storage: str | CounterStorage = DEFAULT_STORAGE,
    ) -> None:
        self.app = app
        if isinstance(rules, RuleTable):
            if public:
                raise ValueError("give public paths to the RuleTable, not beside it")
            self.rules = rules
        else:
            self.rules = RuleTable(rules, public)
        self.required = required
        if not isinstance(environ_key, str) or not environ_key:
            raise ValueError(f"environ_key must be a non-empty string, not {environ_key!r}")
        self.environ_key = environ_key
        self.hide_credentials = hide_credentials
        self.preflight = preflight
        super().__init__(
            store,
            key_types=key_types,
            log_usage=log_usage,
            usage_writer=usage_writer,
            usage_retention=usage_retention,
            throttle=throttle,
            retry_after=retry_after,
            default_rate_limit=default_rate_limit,
            rate_limit_storage=rate_limit_storage,
        )

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
        # Percent-escapes spell the name too ("%5Fmethod"), as the app decodes it.
        if query and ("_method" in query or "%" in query):
            overrides += _query_overrides(query, 1 - len(overrides))
        if not overrides:
            return needs
        if len(overrides) > 1:
            return Verdict.BAD_REQUEST
        override = overrides[0].strip()
        if len(override) > _LONGEST_METHOD or override.upper() not in OVERRIDE_METHODS:
            return Verdict.BAD_REQUEST
        other = self.rules.needs(override.upper(), raw_path)
        if not isinstance(other, tuple):
            return Verdict.BAD_REQUEST
        return tuple(sorted({*needs, *other}))

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
        principal, error, key_id, quota = self.judge(environ, scopes)
        if error is not None:
            return self._refuse(error, key_id, environ, start_response, quota)
        environ[self.environ_key] = principal
        return self._call_app(key_id, environ, start_response, quota=quota)

    def _refuse(
        self,
        error: ApiKeyError,
        key_id: str | None,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        quota: Quota | None = None,
    ) -> Iterable[bytes]:
        if self.required:
            if key_id is not None:
                self.record(key_id, environ, error.status, False)
            if quota is not None:
                start_response = _adding_headers(start_response, quota.headers())
            return error(environ, start_response)
        environ[ERROR_ENVIRON_KEY] = error
        return self._call_app(key_id, environ, start_response, accepted=False, quota=quota)

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
        record = self.usage.record
        # What the guard judged, before the app (or a dispatcher in it) rewrites it.
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        address = environ.get("REMOTE_ADDR")
        # The statuses the app started its response with; the first is logged.
        started: list[str] = []

        def logging_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
        ) -> t.Any:
            started.append(status)
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, logging_start_response)
        except BaseException:
            _log_first(record, started, key_id, method, path, address, accepted)
            raise
        if started:
            # The writer reads a line's code, off the request path; what is
            # not a line (an int, bytes) has none.
            status: int | str = started[0]
            if type(status) is not str:
                status = status_code(status)
            record(key_id, method, path, status, address, accepted)
            return body
        # A generator starts the response as it is read: if reading it fails
        # first, the server answers 500 and closes it.
        return ClosingIterator(
            body,
            functools.partial(_log_first, record, started, key_id, method, path, address, accepted),
        )
