"""Shared fixtures: one key store per database the machine offers.

SQLite always runs. PostgreSQL and MySQL/MariaDB run when
``APIKEY_TEST_POSTGRES_URL`` and ``APIKEY_TEST_MYSQL_URL`` name a database
(``.ci/run`` sets both); otherwise their tests are skipped, saying why. The
same goes for Redis and ``APIKEY_TEST_REDIS_URL``; tests there keep to keys
of their own prefix and delete them afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import typing as t
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Blueprint, Flask, jsonify
from flask.typing import ResponseReturnValue
from flask.views import MethodView
from werkzeug.test import TestResponse

from apikey_middleware import Principal, SQLAlchemyKeyStore
from apikey_middleware.flask import ApiKeys, current_principal, require_scopes
from apikey_middleware.keys import ParsedKey, parse_key
from apikey_middleware.schema import metadata

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# The fixture users get (apikey_store), and pytester to run their test files.
pytest_plugins = ["apikey_middleware.testing", "pytester"]

SERVER_URL_VARIABLES = {
    "postgresql": "APIKEY_TEST_POSTGRES_URL",
    "mysql": "APIKEY_TEST_MYSQL_URL",
    "redis": "APIKEY_TEST_REDIS_URL",
}
TEST_ROUNDS = 4


def server_url(backend: str) -> str:
    """The URL of a database server for ``backend``, or skip the test."""
    variable = SERVER_URL_VARIABLES[backend]
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{variable} is not set: no {backend} server to test against")
    return url


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell may export what ``make run`` printed: the tests
    name their own database and pepper."""
    for name in ("APIKEY_DATABASE_URL", "APIKEY_PEPPER", "APIKEY_BCRYPT_ROUNDS"):
        monkeypatch.delenv(name, raising=False)


@contextlib.contextmanager
def emptied(url: str | sa.URL) -> Iterator[None]:
    """The store's tables of a database server dropped before and after."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    metadata.drop_all(engine)
    try:
        yield
    finally:
        metadata.drop_all(engine)
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend; its tables are dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
        return
    url = server_url(request.param)
    with emptied(url):
        yield url


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards
    (the server is shared: never FLUSHALL)."""
    import redis

    url = server_url("redis")
    prefix = f"apikey-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def store(database_url: str, store_factory: StoreFactory) -> SQLAlchemyKeyStore:
    """A ready store on each backend, with cheap bcrypt."""
    return store_factory(database_url)


@pytest.fixture
def sqlite_store(store_factory: StoreFactory) -> SQLAlchemyKeyStore:
    """A ready store on SQLite only, for tests about HTTP rather than storage."""
    return store_factory()


class Statements:
    """The SQL statements a store's engine runs from now on."""

    def __init__(self, store: SQLAlchemyKeyStore) -> None:
        self.seen: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        self.seen.append(statement)

    @property
    def key_reads(self) -> int:
        """How many of them read the keys table."""
        return sum("FROM apikey_keys" in statement for statement in self.seen)


def expire_now(store: SQLAlchemyKeyStore, key_id: str) -> None:
    """Make a key expired, without waiting: an expiry in the past cannot be
    given to the store (it refuses one that is not in the future)."""
    from apikey_middleware._time import utcnow
    from apikey_middleware.schema import ApiKey

    with store.engine.begin() as connection:
        connection.execute(
            sa.update(ApiKey)
            .where(ApiKey.id == key_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll ``condition`` until it holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.005)
    return time.monotonic() - started


class StoreFactory(t.Protocol):
    """Makes a store (on SQLite in the test's folder unless told where) and
    closes it when the test ends."""

    def __call__(
        self,
        url_or_engine: str | sa.URL | sa.Engine | None = None,
        *,
        schema: bool = True,
        **options: t.Any,
    ) -> SQLAlchemyKeyStore: ...


@pytest.fixture
def store_factory(sqlite_url: str) -> Iterator[StoreFactory]:
    made: list[SQLAlchemyKeyStore] = []

    def make(
        url_or_engine: str | sa.URL | sa.Engine | None = None,
        *,
        schema: bool = True,
        **options: t.Any,
    ) -> SQLAlchemyKeyStore:
        options.setdefault("bcrypt_rounds", TEST_ROUNDS)
        store = SQLAlchemyKeyStore(url_or_engine or sqlite_url, **options)
        made.append(store)
        if schema:
            store.create_schema()
        return store

    yield make
    for store in made:
        store.close()


# -- requests and answers ------------------------------------------------

MISSING = {
    "success": False,
    "error": {"code": "UNAUTHORIZED", "message": "No API key provided"},
}
INVALID = {
    "success": False,
    "error": {
        "code": "INVALID_API_KEY",
        "message": "The provided API key is invalid or has been revoked",
    },
}
FORBIDDEN = {
    "success": False,
    "error": {
        "code": "FORBIDDEN",
        "message": "Your API key does not have permission to perform this action",
    },
}


class RecordingApp:
    """A tiny WSGI app that remembers the environs it was called with."""

    def __init__(self) -> None:
        self.environs: list[WSGIEnvironment] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.environs.append(environ)
        principal: Principal | None = environ.get("apikey.principal")
        body = {"key_id": principal.key_id if principal else None}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    @property
    def last(self) -> WSGIEnvironment:
        return self.environs[-1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_refused(
    response: TestResponse, status: int, body: dict[str, object], challenge: str | None
) -> None:
    assert response.status_code == status
    assert response.json == body
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers.get("WWW-Authenticate") == challenge


def parsed(key: str) -> ParsedKey:
    """``key`` parsed, for the store's own API."""
    result = parse_key(key)
    assert result is not None
    return result


# -- a Flask app with every kind of decorated view --------------------------


def whoami() -> ResponseReturnValue:
    principal = current_principal
    return jsonify(key_id=principal.key_id if principal else None)


def make_app(store: SQLAlchemyKeyStore | None = None, **config: t.Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    ApiKeys(app, store=store)

    @app.get("/open")
    def open_view() -> ResponseReturnValue:
        return whoami()

    @app.get("/any")
    @require_scopes()
    def any_key() -> ResponseReturnValue:
        return whoami()

    @app.get("/read")
    @require_scopes("clients:read")
    def read() -> ResponseReturnValue:
        return whoami()

    @app.post("/write")
    @require_scopes("clients:write", "clients:read")
    def write() -> ResponseReturnValue:
        return whoami()

    @app.get("/async")
    @require_scopes("clients:read")
    async def async_read() -> ResponseReturnValue:
        return whoami()

    blueprint = Blueprint("bp", __name__, url_prefix="/bp")

    @blueprint.get("/read")
    @require_scopes("clients:read")
    def bp_read() -> ResponseReturnValue:
        return whoami()

    app.register_blueprint(blueprint)

    class Clients(MethodView):
        decorators: t.ClassVar[list[t.Any]] = [require_scopes("clients:read")]

        def get(self) -> ResponseReturnValue:
            return whoami()

        @require_scopes("clients:delete")
        def delete(self) -> ResponseReturnValue:
            return whoami()

    app.add_url_rule("/view", view_func=Clients.as_view("clients"))
    return app
