"""The dashboard's pages: the key list, Generate New Key, Revoke, Rotate, usage.

Every page works for the signed-in account only, on its own keys: a key id
of another account, or of no account, answers 404 as an unknown one does.
Every change is a ``POST`` carrying the session's CSRF token. A new key is
in one response only, the one to the ``POST`` that made it.
"""

from __future__ import annotations

import logging
import typing as t
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from flask import (
    Blueprint,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from sqlalchemy import exc
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.wrappers import Response

from .._time import utcnow
from ..buckets import Bucket
from ..errors import KeyNotFoundError, StoreError
from ..keys import KEY_TYPES, is_key_id
from ..principal import validate_scope
from ..records import KeyRecord
from ._charts import Chart, draw, usage_summary
from ._forms import GRACE_PERIODS, KeyForm, RotateForm
from .security import CSRF_FIELD, csrf_token, csrf_token_valid, secure_headers

if t.TYPE_CHECKING:
    from ..store import SQLAlchemyKeyStore

__all__ = ["Dashboard", "create_dashboard"]

logger = logging.getLogger("apikey_middleware")

_SPARK_DAYS = 14
#: The usage page's charts: bucket -> how many of them.
_USAGE_SPANS: dict[str, int] = {"hour": 48, "day": 30}
_LATEST = 50
_MAX_QUERY = 200


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
    :raises ValueError: a scope, key type, ``login_url`` or ``per_page`` is
        not valid.
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
    pages = _Pages(dashboard)
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
            return _page("apikey_dashboard/refused.html", 400)
        return None

    return guard


def _login_url(login_url: str, path: str) -> str:
    """``login_url`` with ``next``: the path asked for, on this site."""
    parts = urllib.parse.urlsplit(login_url)
    query = [*urllib.parse.parse_qsl(parts.query), ("next", path.rstrip("?"))]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _page(template: str, status: int = 200, **context: t.Any) -> Response:
    return Response(render_template(template, **context), status, mimetype="text/html")


def _http_error(error: HTTPException) -> ResponseReturnValue:
    if isinstance(error, NotFound):
        return _page("apikey_dashboard/not_found.html", 404)
    return error


def _store_error(error: Exception) -> ResponseReturnValue:
    # The driver's words stay in the log; keys never reach the store's
    # errors (only ids, names and scopes do).
    logger.warning("API key dashboard: the key store failed: %s", type(error).__name__)
    return _page("apikey_dashboard/unavailable.html", 503)


class _Pages:
    """The views, around one :class:`Dashboard`."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.store = dashboard.store

    def index(self) -> ResponseReturnValue:
        show_revoked = request.args.get("revoked") == "1"
        query = request.args.get("q", "")[:_MAX_QUERY].strip()
        records = self.store.list_keys(owner=self.dashboard.owner(), include_revoked=show_revoked)
        if query:
            wanted = query.lower()
            records = [
                record
                for record in records
                if wanted in record.name.lower() or wanted in record.prefix.lower()
            ]
        records.reverse()  # newest first
        per_page = self.dashboard.per_page
        pages = max(1, -(-len(records) // per_page))
        page = request.args.get("page", "1")
        number = int(page) if page.isdigit() and 1 <= int(page) <= pages else 1
        shown = records[(number - 1) * per_page : number * per_page]
        now = utcnow()
        return _page(
            "apikey_dashboard/list.html",
            rows=[(record, record.state(now), self._spark(record)) for record in shown],
            count=len(records),
            page=number,
            pages=pages,
            query=query,
            show_revoked=show_revoked,
            spark_days=_SPARK_DAYS,
        )

    def _spark(self, record: KeyRecord) -> Chart:
        now = utcnow()
        since = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
            days=_SPARK_DAYS - 1
        )
        # A key not used since the window began has nothing to count.
        used = record.last_used_at is not None and record.last_used_at >= since
        buckets = (
            usage_summary(self.store, key_id=record.id, since=since, bucket="day") if used else []
        )
        return draw(buckets, bucket="day", count=_SPARK_DAYS, width=84, height=20, until=now)

    def new(self) -> ResponseReturnValue:
        dashboard = self.dashboard
        if request.method == "GET":
            return _page("apikey_dashboard/new.html", form=KeyForm(key_type=dashboard.key_types[0]))
        form = KeyForm.read(
            request.form,
            scopes=dashboard.scopes,
            key_types=dashboard.key_types,
        )
        if form.errors:
            return _page("apikey_dashboard/new.html", 400, form=form)
        try:
            issued = self.store.create_key(
                form.name, owner=dashboard.owner(), **form.store_options()
            )
        except ValueError:
            # What the form could not check (a rate limit the store refuses).
            errors = {"form": "The key could not be made with these settings."}
            return _page(
                "apikey_dashboard/new.html", 400, form=KeyForm(**{**vars(form), "errors": errors})
            )
        logger.info("API key dashboard: %s made key %s", dashboard.owner(), issued.id)
        return _page("apikey_dashboard/created.html", 201, issued=issued, rotated=None)

    def revoke(self, key_id: str) -> ResponseReturnValue:
        record = self.dashboard.key_of_owner(key_id)
        if request.method == "GET":
            return _page("apikey_dashboard/revoke.html", record=record)
        try:
            self.store.revoke(record.id)
        except KeyNotFoundError:
            abort(404)
        logger.info("API key dashboard: %s revoked key %s", self.dashboard.owner(), record.id)
        flash(
            f"Revoked “{record.name}” ({record.prefix}). Requests with it are refused from now on."
        )
        return redirect(url_for(".index"), 303)

    def rotate(self, key_id: str) -> ResponseReturnValue:
        record = self.dashboard.key_of_owner(key_id)
        if request.method == "GET":
            return _page("apikey_dashboard/rotate.html", record=record, form=RotateForm())
        form = RotateForm.read(request.form)
        if form.errors:
            return _page("apikey_dashboard/rotate.html", 400, record=record, form=form)
        try:
            issued = self.store.rotate(record.id, grace=form.period)
        except KeyNotFoundError:
            abort(404)
        except ValueError:
            errors = {"form": "This key is revoked: it cannot be rotated."}
            return _page(
                "apikey_dashboard/rotate.html",
                409,
                record=record,
                form=RotateForm(form.grace, errors),
            )
        logger.info(
            "API key dashboard: %s rotated key %s to %s",
            self.dashboard.owner(),
            record.id,
            issued.id,
        )
        old = self.store.get_key(record.id) or record
        return _page("apikey_dashboard/created.html", 201, issued=issued, rotated=old)

    def usage(self, key_id: str) -> ResponseReturnValue:
        record = self.dashboard.key_of_owner(key_id)
        by = request.args.get("by", "hour")
        if by not in _USAGE_SPANS:
            by = "hour"
        bucket = t.cast(Bucket, by)
        count = _USAGE_SPANS[by]
        now = utcnow()
        step = timedelta(hours=1) if by == "hour" else timedelta(days=1)
        since = now - step * count
        buckets = usage_summary(self.store, key_id=record.id, since=since, bucket=bucket)
        chart = draw(buckets, bucket=bucket, count=count, width=720, height=180, until=now)
        return _page(
            "apikey_dashboard/usage.html",
            record=record,
            state=record.state(now),
            chart=chart,
            by=by,
            spans=_USAGE_SPANS,
            latest=self.store.usage(record.id, limit=_LATEST),
        )
