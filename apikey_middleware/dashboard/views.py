"""The dashboard blueprint: the key list, Generate New Key, Revoke, Rotate, usage.

Every page works for the signed-in account only, on its own keys: a key id
of another account, or of no account, answers 404 as an unknown one does.
Every change is a ``POST`` carrying the session's CSRF token. A new key is
in one response only, the one to the ``POST`` that made it. How many keys
an account may make, and how fast, is bounded (``key_rate``, ``max_keys``).
"""

from __future__ import annotations

import logging
import typing as t
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from flask import Blueprint, abort, g, redirect, request
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from sqlalchemy import exc
from werkzeug.exceptions import HTTPException, NotFound

from ..counters import CounterStorage
from ..errors import StoreError
from ..keys import KEY_TYPES, is_key_id
from ..principal import validate_scope
from ..records import KeyRecord
from ._bounds import DEFAULT_KEY_RATE, DEFAULT_MAX_KEYS, MintBounds
from ._forms import GRACE_PERIODS
from ._pages import Pages, page
from .security import CSRF_FIELD, csrf_token, csrf_token_valid, secure_headers

if t.TYPE_CHECKING:
    from ..store import SQLAlchemyKeyStore

__all__ = ["Dashboard", "create_dashboard"]

logger = logging.getLogger("apikey_middleware")


@dataclass(frozen=True)
class Dashboard:
    """What a mounted dashboard was made with; templates see it as
    ``dashboard``."""

    name: str
    store: SQLAlchemyKeyStore
    current_owner: Callable[[], str | None]
    login_url: str
    scopes: Mapping[str, str]
    logout_url: str | None
    key_types: tuple[str, ...]
    per_page: int
    title: str

    @property
    def grace_periods(self) -> list[str]:
        """What the Rotate form offers, in order."""
        return list(GRACE_PERIODS)

    def owner(self) -> str:
        """The signed-in account (a request gets to a page only with one)."""
        owner = g.get("_apikey_dashboard_owner")
        if not isinstance(owner, str):
            raise RuntimeError("no account is signed in")
        return owner

    def key_of_owner(self, key_id: str) -> KeyRecord:
        """The record of one of the account's keys; 404 for any other id."""
        record = self.store.get_key(key_id) if is_key_id(key_id) else None
        if record is None or record.owner is None or record.owner != self.owner():
            abort(404)
        return record


def create_dashboard(
    store: SQLAlchemyKeyStore,
    *,
    current_owner: Callable[[], str | None],
    login_url: str,
    scopes: Mapping[str, str],
    logout_url: str | None = None,
    name: str = "apikey_dashboard",
    key_types: Sequence[str] = KEY_TYPES,
    per_page: int = 50,
    title: str = "API Keys",
    key_rate: str | None = DEFAULT_KEY_RATE,
    max_keys: int | None = DEFAULT_MAX_KEYS,
    counters: CounterStorage | None = None,
) -> Blueprint:
    """The seed's Settings > API Keys page as a blueprint to register.

    :param store: the key store the app's API is guarded with.
    :param current_owner: returns the signed-in account's owner id (what
        its keys' ``owner`` is), or ``None``: then the dashboard redirects
        to ``login_url``, with ``next`` set to the page asked for.
    :param login_url: the host app's sign-in page.
    :param scopes: the permissions a key may be given, each with the
        description shown beside its checkbox, in the order shown.
    :param logout_url: where the page's **Sign out** button posts (with the
        CSRF token, see :mod:`~apikey_middleware.dashboard.security`); no
        button without it.
    :param name: the blueprint's name (and its endpoints' prefix).
    :param key_types: the key types offered (``"test"``, ``"live"``).
    :param per_page: how many keys one page of the list shows.
    :param title: the page title.
    :param key_rate: how many keys one account may make (Generate New Key
        and Rotate alike), in the ``limits`` notation; past it the form
        answers 429 and nothing is made. Each key costs a bcrypt on a
        request worker: the default, ``"5/minute;30/hour"``, keeps one
        account from starving the API's other clients. ``None``: no rate.
    :param max_keys: the most active keys one account may hold (50 by
        default); past it Generate New Key, and Rotate with a grace period,
        answer 409. ``None``: no bound.
    :param counters: where ``key_rate`` is counted. By default, the
        counters of the app's :class:`~apikey_middleware.flask.ApiKeys`
        rate limits (with Redis, shared by every process and host), or
        this process's memory if it has none.

    Templates are under ``apikey_dashboard/``; an app overrides any of them
    with a file of the same name in its own templates folder
    (``apikey_dashboard/layout.html`` to fit the page into its own look).
    The app needs a ``secret_key``; the dashboard sets its session cookie to
    ``SameSite=Lax`` unless the app chose ``Strict``.

    .. code-block:: python

        bp = create_dashboard(
            store,
            current_owner=lambda: session.get("account"),
            login_url="/login",
            scopes={"clients:read": "Read clients"},
        )
        app.register_blueprint(bp, url_prefix="/settings/api-keys")

    :raises TypeError: ``current_owner`` is not callable.
    :raises ValueError: a scope, key type, ``login_url``, ``per_page``,
        ``key_rate`` or ``max_keys`` is not valid.
    """
    if not callable(current_owner):
        raise TypeError("current_owner must be a callable returning an owner id or None")
    if not isinstance(login_url, str) or not login_url:
        raise ValueError("login_url must be the URL of the app's sign-in page")
    if not scopes or not all(isinstance(text, str) for text in scopes.values()):
        raise ValueError("scopes must map each scope offered to its description")
    for scope in scopes:
        validate_scope(scope)
    if not key_types or not set(key_types) <= set(KEY_TYPES):
        raise ValueError(f"key_types must be some of {', '.join(KEY_TYPES)}")
    if isinstance(per_page, bool) or not isinstance(per_page, int) or per_page < 1:
        raise ValueError(f"per_page must be a positive integer, not {per_page!r}")
    dashboard = Dashboard(
        name,
        store,
        current_owner,
        login_url,
        dict(scopes),
        logout_url,
        tuple(key_types),
        per_page,
        title,
    )
    bounds = MintBounds(name, key_rate, max_keys, counters)
    bp = Blueprint(
        name,
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    bp.record_once(_check_session_cookie)
    bp.add_app_template_global(csrf_token, "apikey_csrf_token")
    bp.before_request(_guard(dashboard, f"{name}.static"))
    static = f"{name}.static"
    bp.after_request(lambda response: secure_headers(response, no_store=request.endpoint != static))
    bp.context_processor(lambda: {"dashboard": dashboard, "csrf_field": CSRF_FIELD})
    bp.register_error_handler(HTTPException, _http_error)
    bp.register_error_handler(StoreError, _store_error)
    bp.register_error_handler(exc.SQLAlchemyError, _store_error)
    pages = Pages(dashboard, bounds)
    bp.add_url_rule("/", "index", pages.index, methods=["GET"])
    bp.add_url_rule("/new", "new", pages.new, methods=["GET", "POST"])
    bp.add_url_rule("/<key_id>/revoke", "revoke", pages.revoke, methods=["GET", "POST"])
    bp.add_url_rule("/<key_id>/rotate", "rotate", pages.rotate, methods=["GET", "POST"])
    bp.add_url_rule("/<key_id>/usage", "usage", pages.usage, methods=["GET"])
    return bp


def _check_session_cookie(state: BlueprintSetupState) -> None:
    app = state.app
    samesite = app.config.get("SESSION_COOKIE_SAMESITE")
    if samesite is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    elif str(samesite).lower() not in ("lax", "strict"):
        raise ValueError(
            f"SESSION_COOKIE_SAMESITE is {samesite!r}: the API key dashboard needs Lax or Strict"
        )
    if not app.config.get("SESSION_COOKIE_HTTPONLY", True):
        raise ValueError("SESSION_COOKIE_HTTPONLY is off: the API key dashboard needs it on")


def _guard(dashboard: Dashboard, static_endpoint: str) -> Callable[[], ResponseReturnValue | None]:
    def guard() -> ResponseReturnValue | None:
        if request.endpoint == static_endpoint:
            return None
        owner = dashboard.current_owner()
        if owner is None:
            return redirect(_login_url(dashboard.login_url, request.full_path), 303)
        if not isinstance(owner, str):
            raise TypeError(f"current_owner must return a str or None, not {type(owner).__name__}")
        g._apikey_dashboard_owner = owner
        if request.method not in ("GET", "HEAD") and not csrf_token_valid():
            return page("apikey_dashboard/refused.html", 400)
        return None

    return guard


def _login_url(login_url: str, path: str) -> str:
    """``login_url`` with ``next``: the path asked for, on this site."""
    parts = urllib.parse.urlsplit(login_url)
    query = [*urllib.parse.parse_qsl(parts.query), ("next", path.rstrip("?"))]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _http_error(error: HTTPException) -> ResponseReturnValue:
    if isinstance(error, NotFound):
        return page("apikey_dashboard/not_found.html", 404)
    return error


def _store_error(error: Exception) -> ResponseReturnValue:
    # The driver's words stay in the log; keys never reach the store's
    # errors (only ids, names and scopes do).
    logger.warning("API key dashboard: the key store failed: %s", type(error).__name__)
    return page("apikey_dashboard/unavailable.html", 503)
