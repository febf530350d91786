"""A guarded app whose store has a one-connection pool, for the fault tests.

``/hold?seconds=N`` is public and keeps the pool's only connection checked
out for ``N`` seconds, as a slow query or a leak would; every other path
needs a key and answers 200 when the app is reached.
"""

from __future__ import annotations

import json
import os
import time
import typing as t
from collections.abc import Iterable

import sqlalchemy as sa
from werkzeug.wrappers import Request

from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

POOL_TIMEOUT = 0.5


def create_app() -> WSGIApplication:
    engine = sa.create_engine(
        os.environ["APIKEY_DATABASE_URL"],
        pool_size=1,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT,
    )
    # Immediate mode: every request needs a connection (in channel mode, the
    # default on SQLite, a verified key is answered from memory).
    store = SQLAlchemyKeyStore(engine, revocation="immediate")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        if request.path == "/hold":
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
                time.sleep(float(request.args.get("seconds", "3")))
        body = json.dumps({"success": True, "path": request.path}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return ApiKeyMiddleware(app, store, public=["/hold"], log_usage=False)
