"""The dashboard beside a guarded API, as the example mounts it, for the
server tests.

From the environment: ``APIKEY_DATABASE_URL``, ``APIKEY_RATE_LIMIT_STORAGE``,
``APIKEY_RATE_LIMIT_PREFIX``, ``APIKEY_BCRYPT_ROUNDS``. ``/as/<name>`` signs in as ``name`` (no
password: the test is about what a signed-in account can do).
"""

from __future__ import annotations

import os

from flask import Flask, session

from apikey_middleware.dashboard import create_dashboard
from apikey_middleware.flask import ApiKeys, require_scopes


def create_app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "dashboard test app"  # the same in every worker
    app.config.update(
        APIKEY_DATABASE_URL=os.environ["APIKEY_DATABASE_URL"],
        APIKEY_RATE_LIMIT_STORAGE=os.environ["APIKEY_RATE_LIMIT_STORAGE"],
        APIKEY_RATE_LIMIT_PREFIX=os.environ["APIKEY_RATE_LIMIT_PREFIX"],
        APIKEY_BCRYPT_ROUNDS=int(os.environ.get("APIKEY_BCRYPT_ROUNDS", "4")),
        APIKEY_LOG_USAGE=False,
    )
    apikeys = ApiKeys(app)
    with app.app_context():
        store = apikeys.store
    app.register_blueprint(
        create_dashboard(
            store,
            current_owner=lambda: session.get("account"),
            login_url="/login",
            scopes={"clients:read": "Read clients"},
        ),
        url_prefix="/settings/api-keys",
    )

    @app.get("/as/<name>")
    def sign_in(name: str) -> str:
        session["account"] = name
        return "ok"

    @app.get("/v1/clients")
    @require_scopes("clients:read")
    def clients() -> dict[str, bool]:
        return {"success": True}

    return app
