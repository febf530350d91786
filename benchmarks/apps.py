"""The apps the benchmarks measure, in-process and under gunicorn.

For gunicorn: ``gunicorn 'benchmarks.apps:create_app("floor")'`` with
``BENCH_DATABASE_URL`` and ``BENCH_KEY_ID`` set; the ``+limit`` kinds count
a rate limit on every key (``BENCH_RATE_LIMIT``) in ``BENCH_RATE_LIMIT_STORAGE``
under ``BENCH_RATE_LIMIT_PREFIX``, and the ``+flask-limiter`` kinds count the
same limit per key with Flask-Limiter instead, in the same storage: the
obvious alternative; the ``+ping`` kinds send one Redis ``PING`` a request
and count nothing: the least any shared count can cost.
"""

from __future__ import annotations

import os
import typing as t
from collections.abc import Iterable

import sqlalchemy as sa
from flask import Flask

from apikey_middleware import ApiKeyMiddleware, CounterStorage, SQLAlchemyKeyStore
from apikey_middleware.flask import ApiKeys, require_scopes
from apikey_middleware.schema import ApiKey

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

KINDS = (
    "bare",
    "floor",
    "wrapped",
    "wrapped+log",
    "channel",
    "channel+log",
    "wrapped+limit",
    "channel+limit",
    "wrapped+flask-limiter",
    "channel+flask-limiter",
    "wrapped+ping",
    "channel+ping",
)


def hello_app() -> Flask:
    """A Flask hello view: the bare app."""
    app = Flask("bench")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app


def flask_limited_app(limit: str, storage: str, prefix: str) -> Flask:
    """The hello view with Flask-Limiter counting ``limit`` per key id (the
    middleware's principal), fixed window, with its rate limit headers."""
    from flask import request
    from flask_limiter import Limiter

    app = hello_app()
    Limiter(
        lambda: request.environ["apikey.principal"].key_id,
        app=app,
        default_limits=[limit],
        storage_uri=storage,
        key_prefix=prefix,
        strategy="fixed-window",
        headers_enabled=True,
    )
    return app


def pinging_app(storage: str) -> Flask:
    """The hello view sending one Redis ``PING`` first: a round trip to the
    storage, without counting anything."""
    import redis

    client = redis.Redis.from_url(storage)
    app = hello_app()

    @app.before_request
    def ping() -> None:
        client.ping()

    return app


def floor_app(engine: sa.Engine, key_id: str) -> Flask:
    """The hello view plus one hand-written Core ``SELECT`` of the key's row."""
    app = Flask("bench-floor")
    table = t.cast(sa.Table, ApiKey.__table__)
    query = sa.select(table).where(table.c.id == sa.bindparam("id"))

    @app.get("/hello")
    def hello() -> str:
        with engine.connect() as connection:
            row = connection.execute(query, {"id": key_id}).first()
        assert row is not None
        return "hello"

    return app


def decorated_app(store: SQLAlchemyKeyStore, **config: t.Any) -> Flask:
    """The hello view behind ``@require_scopes``."""
    app = Flask("bench-decorated")
    app.config.update(config)
    ApiKeys(app, store=store)

    @app.get("/hello")
    @require_scopes("hello")
    def hello() -> str:
        return "hello"

    return app


def legacy_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A plain WSGI hello, no framework."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def create_app(kind: str) -> WSGIApplication:
    """One of :data:`KINDS`, from ``BENCH_DATABASE_URL`` and ``BENCH_KEY_ID``."""
    if kind == "bare":
        return hello_app().wsgi_app
    url = os.environ["BENCH_DATABASE_URL"]
    if kind == "floor":
        return floor_app(sa.create_engine(url), os.environ["BENCH_KEY_ID"]).wsgi_app
    revocation: t.Literal["immediate", "channel"] = (
        "immediate" if kind.startswith("wrapped") else "channel"
    )
    store = SQLAlchemyKeyStore(url, revocation=revocation)
    limited = kind.endswith("+limit")
    inner = (
        flask_limited_app(
            os.environ["BENCH_RATE_LIMIT"],
            os.environ["BENCH_RATE_LIMIT_STORAGE"],
            os.environ["BENCH_RATE_LIMIT_PREFIX"],
        )
        if kind.endswith("+flask-limiter")
        else pinging_app(os.environ["BENCH_RATE_LIMIT_STORAGE"])
        if kind.endswith("+ping")
        else hello_app()
    )
    return ApiKeyMiddleware(
        inner.wsgi_app,
        store,
        rules=[("GET", "/admin", "admin")],
        public=["/health"],
        log_usage=kind.endswith("+log"),
        default_rate_limit=os.environ["BENCH_RATE_LIMIT"] if limited else None,
        rate_limit_storage=(
            CounterStorage(
                os.environ["BENCH_RATE_LIMIT_STORAGE"], prefix=os.environ["BENCH_RATE_LIMIT_PREFIX"]
            )
            if limited
            else "memory://"
        ),
    )
