"""Flask integration: the ``ApiKeys`` extension and the ``@require_scopes`` decorator.

The extension wraps ``app.wsgi_app`` in
:class:`~apikey_middleware.middleware.ApiKeyMiddleware` with
``required=False``: the middleware judges every key, exactly as it does for a
plain WSGI app, and leaves either the principal or the reason for refusing it
in the environ. ``@require_scopes`` turns that into the same JSON answer the
middleware would send. Views without the decorator run as before.
"""

from __future__ import annotations

import functools
import inspect
import os
import typing as t
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, current_app, has_request_context, request
from werkzeug.local import LocalProxy
from werkzeug.wrappers import Response

from ..cli import flask_group
from ..errors import ApiKeyError, ForbiddenError, MissingKeyError
from ..middleware import ERROR_ENVIRON_KEY, PRINCIPAL_ENVIRON_KEY, ApiKeyMiddleware
from ..principal import Principal, normalize_scopes
from ..settings import SETTINGS, Settings
from ..store import SQLAlchemyKeyStore
from ..throttle import FailureThrottle

#: Where the extension keeps its state: ``app.extensions["apikeys"]``.
EXTENSION_KEY = "apikeys"

F = t.TypeVar("F", bound=Callable[..., t.Any])


@dataclass(frozen=True)
class _State:
    store: SQLAlchemyKeyStore
    middleware: ApiKeyMiddleware


class ApiKeys:
    """API keys for a Flask app.

    :param app: the app to set up now; or call :meth:`init_app` later, once
        per app (the app-factory pattern).
    :param store: the key store to use for every app this instance sets up.
        Without it each app builds a
        :class:`~apikey_middleware.store.SQLAlchemyKeyStore` from its
        config.

    :meth:`init_app` reads the app's ``APIKEY_*`` settings: each one, with its
    default and the store or middleware option it sets, is listed in
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
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` and keep the app's store in ``app.extensions``.

        :raises ValueError: a setting is invalid; the message names it.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("ApiKeys is already set up on this app")
        for name, (default, _) in SETTINGS.items():
            app.config.setdefault(name, default)
        settings = Settings.from_mapping(app.config)
        store = self._store if self._store is not None else self._make_store(app, settings)
        # One storage for rate limits and the throttle: with Redis, both hold
        # across processes and hosts.
        counters = settings.counter_storage()
        throttle = (
            FailureThrottle(settings.throttle_limit, settings.throttle_window, storage=counters)
            if settings.throttle_limit
            else None
        )
        middleware = ApiKeyMiddleware(
            app.wsgi_app,
            store,
            required=False,
            key_types=settings.key_types,
            environ_key=PRINCIPAL_ENVIRON_KEY,
            hide_credentials=settings.hide_credentials,
            preflight=settings.preflight,
            log_usage=settings.log_usage,
            throttle=throttle,
            retry_after=settings.retry_after,
            default_rate_limit=settings.default_rate_limit,
            rate_limit_storage=counters,
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = _State(store, middleware)
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

    @property
    def store(self) -> SQLAlchemyKeyStore:
        """The key store of the current app."""
        return _state().store

    @property
    def middleware(self) -> ApiKeyMiddleware:
        """The current app's middleware (``flush()`` and ``close()`` its usage log)."""
        return _state().middleware


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
#: or ``None``. It is a proxy: test it with ``if current_principal:``, not
#: ``is None``.
current_principal: Principal | None = t.cast("Principal | None", LocalProxy(_get_principal))


def _is_preflight(environ: t.Mapping[str, t.Any]) -> bool:
    return (
        environ.get("REQUEST_METHOD") == "OPTIONS"
        and "HTTP_ORIGIN" in environ
        and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
    )


def _refusal(scopes: tuple[str, ...]) -> Response | None:
    state = _state()
    environ = request.environ
    if state.middleware.preflight and _is_preflight(environ):
        return None
    principal: Principal | None = environ.get(PRINCIPAL_ENVIRON_KEY)
    if principal is None:
        error: ApiKeyError = environ.get(ERROR_ENVIRON_KEY) or MissingKeyError()
        if isinstance(error, ForbiddenError):
            error = ForbiddenError(scopes)
        return error.get_response()
    if scopes and not principal.has_scopes(*scopes):
        return ForbiddenError(scopes).get_response()
    return None


def require_scopes(*scopes: str) -> Callable[[F], F]:
    """Let the view run only for a valid key holding every one of ``scopes``.

    With no scopes, any valid key will do. Otherwise the answer is the same
    JSON error, byte for byte, that
    :class:`~apikey_middleware.middleware.ApiKeyMiddleware` sends. Works on
    sync and async views, blueprint views, and class-based views through
    ``decorators = [require_scopes(...)]``.

    :raises TypeError: a scope is not a string (at decoration time).
    :raises ValueError: a scope is malformed (at decoration time).
    """
    needed = normalize_scopes(scopes)

    def decorator(view: F) -> F:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
                refusal = _refusal(needed)
                if refusal is not None:
                    return refusal
                return await view(*args, **kwargs)

            return t.cast(F, async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            refusal = _refusal(needed)
            if refusal is not None:
                return refusal
            return view(*args, **kwargs)

        return t.cast(F, wrapper)

    return decorator
