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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flask import Flask, current_app, has_request_context, request
from werkzeug.local import LocalProxy
from werkzeug.wrappers import Response

from .cli import flask_group
from .errors import ApiKeyError, ForbiddenError, MissingKeyError
from .hashing import DEFAULT_ROUNDS
from .keys import KEY_TYPES
from .middleware import ERROR_ENVIRON_KEY, ApiKeyMiddleware
from .principal import Principal, normalize_scopes
from .store import DEFAULT_CACHE_SIZE, SQLAlchemyKeyStore
from .throttle import FailureThrottle

EXTENSION_KEY = "apikeys"
PRINCIPAL_ENVIRON_KEY = "apikey.principal"

F = t.TypeVar("F", bound=Callable[..., t.Any])

# How the store's ValueErrors begin -> the setting to blame.
_STORE_ERRORS = (
    ("bcrypt rounds", "APIKEY_BCRYPT_ROUNDS"),
    ("cache size", "APIKEY_CACHE_SIZE"),
    ("revocation", "APIKEY_REVOCATION"),
    ("poll_interval", "APIKEY_POLL_INTERVAL"),
)


@dataclass(frozen=True)
class _State:
    store: SQLAlchemyKeyStore
    middleware: ApiKeyMiddleware


def _setting(app: Flask, name: str, kind: type | tuple[type, ...]) -> t.Any:
    value = app.config[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{name} has the wrong type: {value!r}")
    return value


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
        config = app.config
        config.setdefault("APIKEY_DATABASE_URL", None)
        config.setdefault("APIKEY_BCRYPT_ROUNDS", DEFAULT_ROUNDS)
        config.setdefault("APIKEY_PEPPER", None)
        config.setdefault("APIKEY_CACHE_SIZE", DEFAULT_CACHE_SIZE)
        config.setdefault("APIKEY_TIMEOUT", 5.0)
        config.setdefault("APIKEY_KEY_TYPES", KEY_TYPES)
        config.setdefault("APIKEY_HIDE_CREDENTIALS", False)
        config.setdefault("APIKEY_PREFLIGHT", False)
        config.setdefault("APIKEY_LOG_USAGE", True)
        config.setdefault("APIKEY_REVOCATION", "immediate")
        config.setdefault("APIKEY_POLL_INTERVAL", 1.0)
        config.setdefault("APIKEY_THROTTLE_LIMIT", 0)
        config.setdefault("APIKEY_THROTTLE_WINDOW", 60)

        store = self._store if self._store is not None else self._make_store(app)
        key_types = config["APIKEY_KEY_TYPES"]
        if isinstance(key_types, str) or not isinstance(key_types, Iterable):
            raise ValueError(f"APIKEY_KEY_TYPES must be a list of key types, not {key_types!r}")
        key_types = tuple(key_types)
        if not key_types or not set(key_types) <= set(KEY_TYPES):
            raise ValueError(
                f"APIKEY_KEY_TYPES must hold only {' and '.join(KEY_TYPES)}, not {key_types!r}"
            )
        limit = _setting(app, "APIKEY_THROTTLE_LIMIT", int)
        window = _setting(app, "APIKEY_THROTTLE_WINDOW", (int, float))
        try:
            throttle = FailureThrottle(limit, window) if limit else None
        except ValueError as error:
            raise ValueError(f"APIKEY_THROTTLE_LIMIT/APIKEY_THROTTLE_WINDOW: {error}") from None
        middleware = ApiKeyMiddleware(
            app.wsgi_app,
            store,
            required=False,
            key_types=key_types,
            environ_key=PRINCIPAL_ENVIRON_KEY,
            hide_credentials=_setting(app, "APIKEY_HIDE_CREDENTIALS", bool),
            preflight=_setting(app, "APIKEY_PREFLIGHT", bool),
            log_usage=_setting(app, "APIKEY_LOG_USAGE", bool),
            throttle=throttle,
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = _State(store, middleware)
        app.cli.add_command(flask_group())

    @staticmethod
    def _make_store(app: Flask) -> SQLAlchemyKeyStore:
        url = app.config["APIKEY_DATABASE_URL"]
        if url is None:
            os.makedirs(app.instance_path, exist_ok=True)
            url = f"sqlite:///{os.path.join(app.instance_path, 'apikeys.db')}"
        elif not isinstance(url, str):
            raise ValueError(f"APIKEY_DATABASE_URL must be a string, not {type(url).__name__}")
        pepper = app.config["APIKEY_PEPPER"]
        if isinstance(pepper, str):
            pepper = pepper.encode("utf-8")
        elif pepper is not None and not isinstance(pepper, bytes):
            raise ValueError("APIKEY_PEPPER must be bytes or str")
        rounds = _setting(app, "APIKEY_BCRYPT_ROUNDS", int)
        cache_size = _setting(app, "APIKEY_CACHE_SIZE", int)
        timeout = _setting(app, "APIKEY_TIMEOUT", (int, float))
        revocation = _setting(app, "APIKEY_REVOCATION", str)
        poll_interval = _setting(app, "APIKEY_POLL_INTERVAL", (int, float))
        try:
            return SQLAlchemyKeyStore(
                url,
                bcrypt_rounds=rounds,
                pepper=pepper,
                cache_size=cache_size,
                timeout=float(timeout),
                revocation=revocation,
                poll_interval=poll_interval,
            )
        except ValueError as error:
            message = str(error)
            setting = next(
                (name for start, name in _STORE_ERRORS if message.startswith(start)),
                "APIKEY_DATABASE_URL",
            )
            raise ValueError(f"{setting}: {message}") from None

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
