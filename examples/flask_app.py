"""A Flask API guarded view by view with ``@require_scopes``.

Run it with ``make run`` (``make run PORT=5001`` for another port) or
``python -m examples.flask_app``: it creates a SQLite database
(``APIKEY_DATABASE_URL``, default ``instance/apikeys.db``), issues two demo
test keys, prints each once with ``curl`` lines and the line that points
the ``apikey`` command at the same database, and serves on 127.0.0.1:5000.
Its OpenAPI 3.1 document is at ``/openapi.json``. Two demo accounts, with
passwords made and printed at each run, sign in to the dashboard at
``/settings/api-keys``.

Every JSON body has one style, the package's error bodies': ``{"success":
..., "data" or "error": ...}``, written as ``json.dumps`` writes it.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import secrets
import typing as t
import urllib.parse
from collections.abc import Mapping

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.sansio.response import Response as SansIOResponse
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.wrappers import Response

from apikey_middleware import FailureThrottle, SQLAlchemyKeyStore, StoreError
from apikey_middleware.dashboard import create_dashboard, csrf_token_valid, secure_headers
from apikey_middleware.flask import ApiKeys, require_principal, require_scopes
from examples._demo import (
    DEFAULT_DATABASE_URL,
    busy_port,
    curl,
    demo_name,
    ensure_sqlite_folder,
    issue_demo_keys,
    port_is_free,
    print_demo,
)
from examples._openapi import openapi_document

DEMO_KEYS: list[tuple[str, list[str]]] = [
    ("demo reader", ["clients:read"]),
    ("demo admin", ["clients:read", "clients:write", "clients:delete"]),
]

#: The dashboard's demo accounts; each is the owner of the keys it makes.
DEMO_ACCOUNTS = ("alice", "bob")
#: The permissions the dashboard offers, as the API's routes need them.
SCOPES = {
    "clients:read": "List and read clients",
    "clients:write": "Create clients",
    "clients:delete": "Delete clients",
}
DASHBOARD_URL = "/settings/api-keys/"
#: Failed sign-ins allowed per client address a minute, and per account in
#: 15 minutes: each costs a password hash check (scrypt), so a guesser
#: gets a few, and cannot use the login to starve the API of CPU.
LOGIN_FAILURES_PER_ADDRESS = (10, 60.0)
LOGIN_FAILURES_PER_ACCOUNT = (20, 900.0)

apikeys = ApiKeys()
clients = Blueprint("clients", __name__, url_prefix="/v1/clients")


class ClientBook:
    """The example's data, in memory, one book per app."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, str]] = {}
        self._ids = itertools.count(1)
        self.add("Acme Solar", "ops@acme.example")
        self.add("Sunrise Homes", "hello@sunrise.example")

    def add(self, name: str, email: str) -> dict[str, str]:
        client_id = str(next(self._ids))
        self.rows[client_id] = {"id": client_id, "name": name, "email": email}
        return self.rows[client_id]


class SeedStyleJSON(DefaultJSONProvider):
    """JSON as the error bodies are written: keys in the order given,
    ``", "`` and ``": "`` between items, no newline at the end."""

    sort_keys = False

    def response(self, *args: t.Any, **kwargs: t.Any) -> SansIOResponse:
        body = self.dumps(self._prepare_response_obj(args, kwargs))
        return self._app.response_class(body, mimetype=self.mimetype)


def error_body(code: str, message: str) -> dict[str, t.Any]:
    """The seed's error shape, for the example's own errors."""
    return {"success": False, "error": {"code": code, "message": message}}


def book() -> ClientBook:
    return t.cast(ClientBook, current_app.extensions["example_clients"])


@clients.get("")
@require_scopes("clients:read")
def list_clients() -> ResponseReturnValue:
    caller = require_principal()
    return jsonify(success=True, data=list(book().rows.values()), key_id=caller.key_id)


@clients.post("")
@require_scopes("clients:write")
def create_client() -> ResponseReturnValue:
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or not all(
        isinstance(payload.get(field), str) and payload[field] for field in ("name", "email")
    ):
        return jsonify(error_body("BAD_REQUEST", "send JSON with a name and an email")), 400
    return jsonify(success=True, data=book().add(payload["name"], payload["email"])), 201


@clients.get("/<client_id>")
@require_scopes("clients:read")
def get_client(client_id: str) -> ResponseReturnValue:
    row = book().rows.get(client_id) or abort(404, "No client has this id.")
    return jsonify(success=True, data=row)


@clients.delete("/<client_id>")
@require_scopes("clients:delete")
def delete_client(client_id: str) -> ResponseReturnValue:
    if book().rows.pop(client_id, None) is None:
        abort(404, "No client has this id.")
    return jsonify(success=True)


def create_app(config: Mapping[str, t.Any] | None = None) -> Flask:
    """The app factory: config from ``APIKEY_DATABASE_URL`` and
    ``APIKEY_REVOCATION``, then ``config``."""
    app = Flask(__name__)
    app.json = SeedStyleJSON(app)
    app.config["APIKEY_DATABASE_URL"] = os.environ.get("APIKEY_DATABASE_URL", DEFAULT_DATABASE_URL)
    app.config["APIKEY_REVOCATION"] = os.environ.get("APIKEY_REVOCATION", "immediate")
    app.config.update(config or {})
    ensure_sqlite_folder(app.config["APIKEY_DATABASE_URL"])
    apikeys.init_app(app)
    app.extensions["example_clients"] = ClientBook()
    app.register_blueprint(clients)
    add_login(app)
    add_dashboard(app)

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(status="ok")

    @app.get("/openapi.json")
    def openapi() -> ResponseReturnValue:
        return jsonify(openapi_document(current_app))

    # The example's own HTTP errors in the seed's shape (a refusal of
    # @require_scopes is already in it, and keeps its headers).
    def http_error(error: HTTPException) -> ResponseReturnValue:
        response = error.get_response()
        code = (error.name or "error").upper().replace(" ", "_")
        response.set_data(json.dumps(error_body(code, error.description or "")))
        response.content_type = "application/json"
        return response

    for status in (400, 404, 405, 500):
        app.register_error_handler(status, http_error)
    return app


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site, else the dashboard."""
    parts = urllib.parse.urlsplit(target or "")
    if not target or parts.scheme or parts.netloc or not target.startswith("/") or "\\" in target:
        return DASHBOARD_URL
    return target


def add_login(app: Flask) -> None:
    """The example's own sign-in: ``EXAMPLE_ACCOUNTS`` maps each account to
    a password hash (Werkzeug's); the account is its keys' owner. Failed
    sign-ins are throttled per address and per account name
    (:data:`LOGIN_FAILURES_PER_ADDRESS`, :data:`LOGIN_FAILURES_PER_ACCOUNT`)."""
    if not app.secret_key:
        app.secret_key = os.environ.get("FLASK_SECRET_KEY") or secrets.token_hex(32)
    accounts: dict[str, str] = dict(app.config.get("EXAMPLE_ACCOUNTS", {}))
    # Counted where the API's rate limits are (with Redis, for every process).
    with app.app_context():
        counters = apikeys.guard.rate_limiter.storage
    per_address = FailureThrottle(*LOGIN_FAILURES_PER_ADDRESS, storage=counters)
    per_account = FailureThrottle(*LOGIN_FAILURES_PER_ACCOUNT, storage=counters)

    def throttled(address: str, name: str) -> int | None:
        """Seconds until this address or account may try again, if it may not now."""
        waits = [per_address.retry_after(address), per_account.retry_after(f"account:{name}")]
        return max((wait for wait in waits if wait is not None), default=None)

    # Checked for an unknown name too, so that the answer takes as long; made
    # on first use, so that starting a worker costs no hashing.
    @functools.cache
    def unknown() -> str:
        return generate_password_hash(secrets.token_urlsafe(16))

    @app.route("/login", methods=["GET", "POST"])
    def login() -> ResponseReturnValue:
        error, status = None, 200
        if request.method == "POST":
            name = request.form.get("username", "")[:100]
            password = request.form.get("password", "")
            address = request.remote_addr or ""
            wait = throttled(address, name)
            if not csrf_token_valid():
                error, status = "The form expired: try again.", 400
            elif wait is not None:
                # Refused before any hash is checked.
                error, status = f"Too many failed sign-ins: try again in {wait} s.", 429
            elif name in accounts and check_password_hash(accounts[name], password):
                session.clear()  # a new session, and a new CSRF token, per sign-in
                session["account"] = name
                return redirect(_safe_next(request.args.get("next")), 303)
            else:
                if name not in accounts:
                    check_password_hash(unknown(), password)
                per_address.attempt(address)
                per_account.attempt(f"account:{name}")
                error, status = "Wrong name or password.", 401
        page = render_template("login.html", error=error, accounts=sorted(accounts))
        response = Response(page, status, mimetype="text/html")
        if status == 429:
            response.headers["Retry-After"] = str(wait)
        return secure_headers(response)

    @app.post("/logout")
    def logout() -> ResponseReturnValue:
        if csrf_token_valid():
            session.clear()
        return redirect(url_for("login"), 303)


def add_dashboard(app: Flask) -> None:
    """Settings > API Keys for the signed-in account, at ``/settings/api-keys``."""
    with app.app_context():
        store = apikeys.store
    dashboard = create_dashboard(
        store,
        current_owner=lambda: session.get("account"),
        login_url="/login",
        logout_url="/logout",
        scopes=SCOPES,
    )
    app.register_blueprint(dashboard, url_prefix=DASHBOARD_URL.rstrip("/"))


def accounts_text(base: str, passwords: Mapping[str, str]) -> str:
    """The dashboard's address and the demo accounts' passwords."""
    lines = [f"Dashboard (Settings > API Keys): {base}{DASHBOARD_URL}", ""]
    width = max(map(len, passwords))
    lines += [f"    account: {name:{width}}  password: {pw}" for name, pw in passwords.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the Flask example.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)

    if not port_is_free(args.host, args.port):
        raise SystemExit(busy_port(args.host, args.port, "run"))
    url = os.environ.get("APIKEY_DATABASE_URL", DEFAULT_DATABASE_URL)
    ensure_sqlite_folder(url)
    try:
        setup = SQLAlchemyKeyStore(url)
        setup.create_schema()  # as `flask apikeys init-db` would, before the app starts
    except (ValueError, StoreError, SQLAlchemyError) as error:
        raise SystemExit(f"Cannot set up the key database ({error})") from None
    setup.close()
    passwords = {name: secrets.token_urlsafe(9) for name in DEMO_ACCOUNTS}
    accounts = {name: generate_password_hash(password) for name, password in passwords.items()}
    app = create_app({"EXAMPLE_ACCOUNTS": accounts})
    demo = [(demo_name(name, args.port), scopes) for name, scopes in DEMO_KEYS]
    with app.app_context():
        reader, admin = issue_demo_keys(apikeys.store, demo)
    base = f"http://{args.host}:{args.port}/v1/clients"
    print_demo(
        f"http://{args.host}:{args.port}",
        app.config["APIKEY_DATABASE_URL"],
        [(name, scopes, key) for (name, scopes), key in zip(demo, (reader, admin), strict=True)],
        [
            curl("GET", base, reader),
            curl("POST", base, reader, '{"name": "Nova", "email": "nova@example.com"}')
            + "   # 403",
            curl("POST", base, admin, '{"name": "Nova", "email": "nova@example.com"}'),
            curl("DELETE", f"{base}/1", admin),
        ],
        extra=[
            f"The API's OpenAPI document: http://{args.host}:{args.port}/openapi.json",
            accounts_text(f"http://{args.host}:{args.port}", passwords),
        ],
    )
    app.run(args.host, args.port)


if __name__ == "__main__":
    main()
