"""Flask integration: the ``ApiKeys`` extension and the ``@require_scopes`` decorator.

The check is lazy, as in Flask-HTTPAuth's ``login_required``: only a view
decorated with ``@require_scopes`` reads the key, asks the store, counts
the attempt against the throttle and logs the request. It asks the app's
:class:`~apikey_middleware.guard.KeyGuard`, the same judge
:class:`~apikey_middleware.middleware.ApiKeyMiddleware` is, so both answer
byte for byte alike. Views without the decorator are not touched at all.

A refusal is raised as a :class:`~apikey_middleware.flask.refusals.KeyRefused` (a Werkzeug
:class:`~werkzeug.exceptions.HTTPException`), so the app's own
``@app.errorhandler(401)`` (or ``403``, ``429``, ``503``, or
``KeyRefused``) sees it; without one, the answer is the JSON error of the
package. :meth:`ApiKeys.error_handler` shapes refusals in one place instead.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import typing as t
from collections.abc import Callable
from dataclasses import dataclass

import click
from flask import Flask, current_app, has_request_context, request
from flask.typing import ResponseReturnValue
from werkzeug.local import LocalProxy
from werkzeug.wrappers import Response

from ..cli import flask_group
from ..errors import ApiKeyError, ForbiddenError, StoreError
from ..guard import KeyGuard
from ..middleware import ERROR_ENVIRON_KEY, PRINCIPAL_ENVIRON_KEY
from ..principal import Principal, normalize_scopes
from ..ratelimit import Quota
from ..settings import SETTINGS, Settings
from ..store import SQLAlchemyKeyStore
from ..throttle import FailureThrottle
from .refusals import KeyRefused

__all__ = [
    "EXTENSION_KEY",
    "ApiKeys",
    "KeyRefused",
    "current_principal",
    "require_principal",
    "require_scopes",
    "view_scopes",
]

logger = logging.getLogger("apikey_middleware")

#: Where the extension keeps its state: ``app.extensions["apikeys"]``.
EXTENSION_KEY = "apikeys"
# What a decorated view has judged of the request: its _Visit.
_VISIT_KEY = "apikey.flask.visit"
# The scopes a decorated view needs, on the view (for view_scopes).
_SCOPES_ATTRIBUTE = "__apikey_scopes__"

F = t.TypeVar("F", bound=Callable[..., t.Any])
ErrorHandler = Callable[[ApiKeyError], ResponseReturnValue]


@dataclass(frozen=True)
class _State:
    store: SQLAlchemyKeyStore
    guard: KeyGuard
    extension: ApiKeys
    preflight: bool
    hide_credentials: bool

    @property
    def middleware(self) -> KeyGuard:
        return self.guard


@dataclass
class _Visit:
    """One request's judgement, for the usage log once it is answered."""

    key_id: str | None
    accepted: bool
    #: Where the key stands against its rate limit: the answer's headers.
    quota: Quota | None = None
    logged: bool = False


class ApiKeys:
    """API keys for a Flask app.

    :param app: the app to set up now; or call :meth:`init_app` later, once
        per app (the app-factory pattern).
    :param store: the key store to use for every app this instance sets up.
        Without it each app builds a
        :class:`~apikey_middleware.store.SQLAlchemyKeyStore` from its
        config.

    :meth:`init_app` reads the app's ``APIKEY_*`` settings: each one, with its
    default and the store or guard option it sets, is listed in
    :ref:`configuration` (``docs/configuration.rst``).

    It also adds ``flask apikeys ...``, the ``apikey`` commands on the app's
    store.

    .. code-block:: python

        apikeys = ApiKeys()

        def create_app():
            app = Flask(__name__)
            apikeys.init_app(app)
            return app
    """

    def __init__(
        self, app: Flask | None = None, *, store: SQLAlchemyKeyStore | None = None
    ) -> None:
        self._store = store
        self._error_handler: ErrorHandler | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Keep the app's store and guard in ``app.extensions`` and check
        its database: a different pepper refuses to start, missing tables
        are logged as a warning naming ``flask apikeys init-db``.

        :raises ValueError: a setting is invalid (the message names it), or
            the database's keys were made with another pepper.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("ApiKeys is already set up on this app")
        for name, (default, _) in SETTINGS.items():
            app.config.setdefault(name, default)
        settings = Settings.from_mapping(app.config)
        store = self._store if self._store is not None else self._make_store(app, settings)
        _check_database(app, store)
        # One storage for rate limits and the throttle: with Redis, both hold
        # across processes and hosts.
        counters = settings.counter_storage()
        throttle = (
            FailureThrottle(settings.throttle_limit, settings.throttle_window, storage=counters)
            if settings.throttle_limit
            else None
        )
        guard = KeyGuard(
            store,
            key_types=settings.key_types,
            log_usage=settings.log_usage,
            usage_retention=settings.usage_retention,
            throttle=throttle,
            retry_after=settings.retry_after,
            default_rate_limit=settings.default_rate_limit,
            rate_limit_storage=counters,
        )
        app.extensions[EXTENSION_KEY] = _State(
            store, guard, self, settings.preflight, settings.hide_credentials
        )
        app.after_request(_log_usage)
        app.teardown_request(_log_unanswered)
        app.cli.add_command(flask_group(lambda: _state().store))

    @staticmethod
    def _make_store(app: Flask, settings: Settings) -> SQLAlchemyKeyStore:
        url = settings.database_url
        if url is None:
            os.makedirs(app.instance_path, exist_ok=True)
            url = f"sqlite:///{os.path.join(app.instance_path, 'apikeys.db')}"
        return SQLAlchemyKeyStore(
            url,
            bcrypt_rounds=settings.bcrypt_rounds,
            pepper=settings.pepper,
            cache_size=settings.cache_size,
            timeout=settings.timeout,
            revocation=settings.revocation,
            poll_interval=settings.poll_interval,
        )

    def error_handler(self, handler: ErrorHandler) -> ErrorHandler:
        """Answer every refusal of :func:`require_scopes` with ``handler(error)``.

        A decorator, as Flask-HTTPAuth's ``error_handler`` and
        Flask-Login's ``unauthorized_handler``: ``error`` is the
        :class:`~apikey_middleware.errors.ApiKeyError` (``code``,
        ``status``, ``message``, and :meth:`~apikey_middleware.errors.ApiKeyError.get_response`,
        the default answer); the handler returns anything a view may. With
        it, the app's ``@app.errorhandler(401)`` no longer sees refusals.

        .. code-block:: python

            @apikeys.error_handler
            def refused(error: ApiKeyError) -> ResponseReturnValue:
                return {"message": error.message}, error.status
        """
        self._error_handler = handler
        return handler

    @property
    def store(self) -> SQLAlchemyKeyStore:
        """The key store of the current app."""
        return _state().store

    @property
    def guard(self) -> KeyGuard:
        """The current app's :class:`~apikey_middleware.guard.KeyGuard`
        (``flush()`` and ``close()`` its usage log)."""
        return _state().guard

    @property
    def middleware(self) -> KeyGuard:
        """The same as :attr:`guard` (its name in 0.1.0)."""
        return _state().guard


def _check_database(app: Flask, store: SQLAlchemyKeyStore) -> None:
    try:
        ready = store.check_setup()
    except StoreError as error:
        # A database that is down at start-up does not stop the app.
        logger.warning("could not check the API key database at start-up: %s", error)
        return
    if ready:
        return
    if click.get_current_context(silent=True) is None:
        _warn_missing_tables(store)
        return
    # A `flask` command loads the app, `flask apikeys init-db` among them:
    # say it at the first request instead, if it is still so then.
    unchecked = [True]

    @app.before_request
    def _check_tables_once() -> None:
        if unchecked and unchecked.pop():
            with contextlib.suppress(StoreError):
                if not store.check_setup():
                    _warn_missing_tables(store)


def _warn_missing_tables(store: SQLAlchemyKeyStore) -> None:
    logger.warning(
        "the API key tables are missing from %s: run 'flask apikeys init-db' (or"
        " 'apikey init-db'); decorated views answer 503 until then",
        store.url,
    )


def _state() -> _State:
    state = current_app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise RuntimeError(
            "API keys are not set up on this app: call ApiKeys(app) or"
            " apikeys.init_app(app) before using @require_scopes"
        )
    return t.cast(_State, state)


def _get_principal() -> Principal | None:
    if not has_request_context():
        return None
    return t.cast("Principal | None", request.environ.get(PRINCIPAL_ENVIRON_KEY))


#: The :class:`~apikey_middleware.principal.Principal` of the current request,
#: or ``None`` (always, in a view without :func:`require_scopes`). It is a
#: proxy: test it with ``if current_principal:``, not ``is None``. In a
#: decorated view, :func:`require_principal` gives it typed.
current_principal: Principal | None = t.cast("Principal | None", LocalProxy(_get_principal))


def require_principal() -> Principal:
    """The :class:`~apikey_middleware.principal.Principal` of the current
    request, in a view decorated with :func:`require_scopes`.

    Typed ``Principal``, not ``Principal | None``: ``mypy --strict`` needs
    no check in the view.

    :raises RuntimeError: no key was accepted for this request: the view is
        not decorated, or there is no request.
    """
    principal = _get_principal()
    if principal is None:
        raise RuntimeError(
            "no API key was accepted for this request: call require_principal()"
            " only in a view decorated with @require_scopes"
        )
    return principal


def _is_preflight(environ: t.Mapping[str, t.Any]) -> bool:
    return (
        environ.get("REQUEST_METHOD") == "OPTIONS"
        and "HTTP_ORIGIN" in environ
        and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
    )


def _check(scopes: tuple[str, ...]) -> Response | None:
    """Judge the request for a view that needs ``scopes``; the refusal's
    answer (or raise it), or ``None`` to run the view."""
    state = _state()
    environ = request.environ
    if state.preflight and _is_preflight(environ):
        return None
    visit: _Visit | None = environ.get(_VISIT_KEY)
    principal: Principal | None = environ.get(PRINCIPAL_ENVIRON_KEY)
    error: ApiKeyError | None
    if visit is not None and principal is not None:
        # A decorator around this one accepted the key: only the scopes are left.
        try:
            state.guard.authorize(principal, scopes)
            return None
        except ForbiddenError as forbidden:
            error = forbidden
        visit.accepted = False
    else:
        principal, error, key_id, quota = state.guard.judge(environ, scopes)
        environ[_VISIT_KEY] = _Visit(key_id, error is None, quota)
        if error is None:
            environ[PRINCIPAL_ENVIRON_KEY] = principal
            if state.hide_credentials:
                environ.pop("HTTP_AUTHORIZATION", None)
            return None
    environ[ERROR_ENVIRON_KEY] = error
    handler = state.extension._error_handler
    if handler is not None:
        return current_app.make_response(handler(error))
    raise KeyRefused.of(error)


def _log_usage(response: Response) -> Response:
    visit: _Visit | None = request.environ.get(_VISIT_KEY)
    if visit is not None and visit.quota is not None:
        # Every answer to a limited key says where it stands, refusals (403)
        # too, as the middleware's do.
        for name, value in visit.quota.headers():
            response.headers[name] = value
    if visit is not None and visit.key_id is not None and not visit.logged:
        visit.logged = True
        _state().guard.record(
            visit.key_id, request.environ, response.status_code, accepted=visit.accepted
        )
    return response


def _log_unanswered(error: BaseException | None) -> None:
    # An exception that escaped every handler (PROPAGATE_EXCEPTIONS): a 500.
    visit: _Visit | None = request.environ.get(_VISIT_KEY)
    if visit is not None and visit.key_id is not None and not visit.logged:
        visit.logged = True
        _state().guard.record(visit.key_id, request.environ, 500, accepted=visit.accepted)


def require_scopes(*scopes: str) -> Callable[[F], F]:
    """Let the view run only for a valid key holding every one of ``scopes``.

    With no scopes, any valid key will do. Otherwise the request is
    refused (:class:`~apikey_middleware.flask.refusals.KeyRefused`) with
    the same JSON error, byte for byte, that
    :class:`~apikey_middleware.middleware.ApiKeyMiddleware` sends. Works on
    sync and async views, blueprint views, and class-based views through
    ``decorators = [require_scopes(...)]``; stacked, a request is
    authenticated once and needs the scopes of each.

    :raises TypeError: a scope is not a string, or the decorator was used
        without parentheses (at decoration time).
    :raises ValueError: a scope is malformed (at decoration time).
    """
    if len(scopes) == 1 and callable(scopes[0]):
        raise TypeError(
            "require_scopes needs parentheses: @require_scopes() for any valid key,"
            ' @require_scopes("clients:read") for a scope'
        )
    needed = normalize_scopes(scopes)

    def decorator(view: F) -> F:
        wrapper: t.Any
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
                refusal = _check(needed)
                if refusal is not None:
                    return refusal
                return await view(*args, **kwargs)

        else:

            @functools.wraps(view)
            def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
                refusal = _check(needed)
                if refusal is not None:
                    return refusal
                return view(*args, **kwargs)

        inner: tuple[str, ...] = getattr(view, _SCOPES_ATTRIBUTE, ())
        setattr(wrapper, _SCOPES_ATTRIBUTE, tuple(sorted({*needed, *inner})))
        return t.cast(F, wrapper)

    return decorator


def view_scopes(view: Callable[..., t.Any]) -> tuple[str, ...] | None:
    """The scopes :func:`require_scopes` makes ``view`` need (those of
    stacked decorators together), or ``None`` if it is not decorated; for
    documents such as :func:`~apikey_middleware.flask.openapi.paths`."""
    scopes = getattr(view, _SCOPES_ATTRIBUTE, None)
    return None if scopes is None else tuple(scopes)
