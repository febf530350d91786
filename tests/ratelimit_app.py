"""A guarded WSGI app with rate limits and the throttle, for the server tests.

From the environment: ``APIKEY_DATABASE_URL``, ``APIKEY_RATE_LIMIT_STORAGE``,
``APIKEY_RATE_LIMIT_PREFIX``, ``APIKEY_THROTTLE_LIMIT`` (0: off) and
``APIKEY_TEST_RETRY_INTERVAL`` (seconds between tries of a storage that
failed). Every path needs a key; the app answers its process id, after
``?sleep=S`` seconds (at most 1), so that concurrent requests spread over
the workers.
"""

from __future__ import annotations

import json
import os
import time
import typing as t
from collections.abc import Iterable

from werkzeug.wrappers import Request

from apikey_middleware import ApiKeyMiddleware, CounterStorage, FailureThrottle, SQLAlchemyKeyStore

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    request = Request(environ)
    time.sleep(min(1.0, float(request.args.get("sleep", "0"))))
    body = json.dumps({"success": True, "pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def create_app() -> WSGIApplication:
    store = SQLAlchemyKeyStore(os.environ["APIKEY_DATABASE_URL"])
    counters = CounterStorage(
        os.environ["APIKEY_RATE_LIMIT_STORAGE"],
        prefix=os.environ["APIKEY_RATE_LIMIT_PREFIX"],
        retry_interval=float(os.environ.get("APIKEY_TEST_RETRY_INTERVAL", "5")),
    )
    limit = int(os.environ.get("APIKEY_THROTTLE_LIMIT", "0"))
    return ApiKeyMiddleware(
        app,
        store,
        log_usage=False,
        rate_limit_storage=counters,
        throttle=FailureThrottle(limit, 60) if limit else None,
    )
