"""A Flask API guarded view by view with ``@require_scopes``.

Run it with ``make run`` or ``python -m examples.flask_app``: it creates a
SQLite database (``APIKEY_DATABASE_URL``, default ``instance/apikeys.db``),
issues two demo test keys, prints each once with ``curl`` lines, and serves
on 127.0.0.1:5000.
"""

from __future__ import annotations

import argparse
import itertools
import os
import typing as t
from collections.abc import Mapping

from flask import Blueprint, Flask, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from apikey_middleware.flask import ApiKeys, current_principal, require_scopes
from examples._demo import (
    DEFAULT_DATABASE_URL,
    curl,
    ensure_sqlite_folder,
    issue_demo_keys,
    print_demo,
)

DEMO_KEYS: list[tuple[str, list[str]]] = [
    ("demo reader", ["clients:read"]),
    ("demo admin", ["clients:read", "clients:write", "clients:delete"]),
]

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


def book() -> ClientBook:
    return t.cast(ClientBook, current_app.extensions["example_clients"])


def _caller() -> str | None:
    return current_principal.key_id if current_principal else None


@clients.get("")
@require_scopes("clients:read")
def list_clients() -> ResponseReturnValue:
    return jsonify(success=True, data=list(book().rows.values()), key_id=_caller())


@clients.post("")
@require_scopes("clients:write")
def create_client() -> ResponseReturnValue:
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or not all(
        isinstance(payload.get(field), str) and payload[field] for field in ("name", "email")
    ):
        return jsonify(success=False, error="send JSON with a name and an email"), 400
    return jsonify(success=True, data=book().add(payload["name"], payload["email"])), 201


@clients.get("/<client_id>")
@require_scopes("clients:read")
def get_client(client_id: str) -> ResponseReturnValue:
    row = book().rows.get(client_id) or abort(404)
    return jsonify(success=True, data=row)


@clients.delete("/<client_id>")
@require_scopes("clients:delete")
def delete_client(client_id: str) -> ResponseReturnValue:
    if book().rows.pop(client_id, None) is None:
        abort(404)
    return jsonify(success=True)


def create_app(config: Mapping[str, t.Any] | None = None) -> Flask:
    """The app factory: config from ``APIKEY_DATABASE_URL`` and
    ``APIKEY_REVOCATION``, then ``config``."""
    app = Flask(__name__)
    app.config["APIKEY_DATABASE_URL"] = os.environ.get("APIKEY_DATABASE_URL", DEFAULT_DATABASE_URL)
    app.config["APIKEY_REVOCATION"] = os.environ.get("APIKEY_REVOCATION", "immediate")
    app.config.update(config or {})
    ensure_sqlite_folder(app.config["APIKEY_DATABASE_URL"])
    apikeys.init_app(app)
    app.extensions["example_clients"] = ClientBook()
    app.register_blueprint(clients)

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(status="ok")

    @app.errorhandler(404)
    def not_found(error: Exception) -> ResponseReturnValue:
        return jsonify(success=False, error="not found"), 404

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the Flask example.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)

    app = create_app()
    with app.app_context():
        reader, admin = issue_demo_keys(apikeys.store, DEMO_KEYS)
    base = f"http://{args.host}:{args.port}/v1/clients"
    print_demo(
        f"http://{args.host}:{args.port}",
        [
            (name, scopes, key)
            for (name, scopes), key in zip(DEMO_KEYS, (reader, admin), strict=True)
        ],
        [
            curl("GET", base, reader),
            curl("POST", base, reader, '{"name": "Nova", "email": "nova@example.com"}')
            + "   # 403",
            curl("POST", base, admin, '{"name": "Nova", "email": "nova@example.com"}'),
            curl("DELETE", f"{base}/1", admin),
        ],
    )
    app.run(args.host, args.port)


if __name__ == "__main__":
    main()
