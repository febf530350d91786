"""A legacy WSGI app, no framework, guarded by ApiKeyMiddleware.

Run it with ``make run-legacy`` or ``python -m examples.legacy_app``: it
creates a SQLite database (``APIKEY_DATABASE_URL``, default
``instance/apikeys.db``), issues a demo test key, prints it once, and serves
on 127.0.0.1:5000.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import typing as t
from collections.abc import Iterable

from werkzeug.serving import run_simple

from apikey_middleware import ApiKeyMiddleware, Principal, SQLAlchemyKeyStore
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

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

DEMO_KEY_NAME = "legacy demo"

CLIENTS: dict[str, dict[str, str]] = {
    "1": {"id": "1", "name": "Acme Solar", "email": "ops@acme.example"},
    "2": {"id": "2", "name": "Sunrise Homes", "email": "hello@sunrise.example"},
}

_CLIENT_PATH = re.compile(r"/v1/clients/([^/]+)")


def _json(start_response: StartResponse, status: str, payload: object) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _error(code: str, message: str) -> dict[str, t.Any]:
    # The shape of the package's own error bodies.
    return {"success": False, "error": {"code": code, "message": message}}


def clients_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The app being guarded: it knows nothing of keys, only reads the principal."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    principal: Principal | None = environ.get("apikey.principal")
    if path == "/health":
        return _json(start_response, "200 OK", {"status": "ok"})
    if path == "/v1/clients" and method == "GET":
        caller = principal.name if principal else None
        return _json(
            start_response,
            "200 OK",
            {"success": True, "data": list(CLIENTS.values()), "key": caller},
        )
    match = _CLIENT_PATH.fullmatch(path)
    if match and method == "GET":
        client = CLIENTS.get(match.group(1))
        if client is None:
            return _json(
                start_response, "404 Not Found", _error("NOT_FOUND", "No client has this id.")
            )
        return _json(start_response, "200 OK", {"success": True, "data": client})
    return _json(start_response, "404 Not Found", _error("NOT_FOUND", "No such resource."))


def make_app(store: SQLAlchemyKeyStore) -> ApiKeyMiddleware:
    """Wrap the legacy app: reads need ``clients:read``; ``/health`` is public."""
    return ApiKeyMiddleware(
        clients_app,
        store,
        rules=[("GET", "/v1/clients", "clients:read"), ("GET", "/v1/clients/<id>", "clients:read")],
        public=["/health"],
        hide_credentials=True,
    )


def create_app() -> ApiKeyMiddleware:
    """For a WSGI server: ``gunicorn 'examples.legacy_app:create_app()'``."""
    url = os.environ.get("APIKEY_DATABASE_URL", DEFAULT_DATABASE_URL)
    ensure_sqlite_folder(url)
    return make_app(SQLAlchemyKeyStore(url))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the legacy WSGI example.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)

    if not port_is_free(args.host, args.port):
        raise SystemExit(busy_port(args.host, args.port, "run-legacy"))
    url = os.environ.get("APIKEY_DATABASE_URL", DEFAULT_DATABASE_URL)
    ensure_sqlite_folder(url)
    store = SQLAlchemyKeyStore(url)
    scopes = ["clients:read"]
    name = demo_name(DEMO_KEY_NAME, args.port)
    (key,) = issue_demo_keys(store, [(name, scopes)])
    base = f"http://{args.host}:{args.port}"
    print_demo(base, url, [(name, scopes, key)], [curl("GET", f"{base}/v1/clients", key)])
    run_simple(args.host, args.port, make_app(store), threaded=True)


if __name__ == "__main__":
    main()
