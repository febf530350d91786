"""Faults under a real server and a real database: fail closed, then recover.

The legacy example runs under gunicorn against PostgreSQL reached through a
TCP proxy that can refuse, hang or cut connections, as a stopped, stuck or
restarting server would. The app must never answer while the store cannot,
every refusal must be the 503 JSON with ``Retry-After`` within a bounded
time, and service must come back without a restart.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import typing as t
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from werkzeug.test import Client

from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore
from apikey_middleware.keys import parse_key
from apikey_middleware.schema import metadata
from apikey_middleware.usage import UsageWriter
from examples import legacy_app

from . import server_databases
from .conftest import TEST_ROUNDS, StoreFactory, emptied, server_url, wait_until
from .pool_app import POOL_TIMEOUT
from .servers import Gunicorn, TcpProxy, gunicorn, request

pytestmark = pytest.mark.slow

# A database server behind a fault proxy (shared with the other server tests).
proxied_server = server_databases.proxied_server

APP = "examples.legacy_app:create_app()"
UNAVAILABLE = "SERVICE_UNAVAILABLE"
BOUND = 15.0  # seconds: the store's 5 s timeouts, with room for a retry


def timed(
    server: Gunicorn, key: str, path: str = "/v1/clients"
) -> tuple[int, dict[str, str], object, float]:
    started = time.monotonic()
    status, headers, body = request(
        f"{server.base}{path}", {"Authorization": f"Bearer {key}"}, timeout=60
    )
    return status, headers, body, time.monotonic() - started


def assert_fails_closed(server: Gunicorn, key: str, bound: float = BOUND) -> None:
    status, headers, body, took = timed(server, key)
    assert status == 503, body
    assert body == {
        "success": False,
        "error": {
            "code": UNAVAILABLE,
            "message": "API key verification is temporarily unavailable, please retry later",
        },
    }
    assert headers["Retry-After"] == "5"
    assert took < bound
    assert key not in str(body)


def assert_serves(server: Gunicorn, key: str) -> None:
    status, _, body, _ = timed(server, key)
    assert status == 200, body
    assert isinstance(body, dict)
    assert body["success"] is True


def seed_key(url: str) -> str:
    """Create the schema and one ``clients:read`` key; return the key."""
    store = SQLAlchemyKeyStore(url, bcrypt_rounds=TEST_ROUNDS)
    store.create_schema()
    key = store.create_key("n", scopes=["clients:read"]).key
    store.close()
    return key


@pytest.fixture
def proxied_postgres() -> Iterator[tuple[TcpProxy, str]]:
    url = sa.make_url(server_url("postgresql"))
    with emptied(url):
        proxy = TcpProxy(url.port or 5432)
        yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
        proxy.close()


def test_postgres_outages_fail_closed_and_recover_without_restart(
    proxied_postgres: tuple[TcpProxy, str],
) -> None:
    proxy, url = proxied_postgres
    key = seed_key(url)
    with gunicorn(APP, {"APIKEY_DATABASE_URL": url}, workers=1) as server:
        assert_serves(server, key)

        proxy.refuse()  # the server is stopped
        assert_fails_closed(server, key)
        assert_fails_closed(server, key)
        proxy.forward()
        assert_serves(server, key)

        proxy.drop()  # every connection cut, as by a restart
        assert_serves(server, key)

        proxy.hang()  # accepts, never answers
        assert_fails_closed(server, key)
        proxy.forward()
        assert_serves(server, key)


TIMEOUT = 2.0
# The store's timeout, the watchdog's margin and a tick, and room for a
# loaded machine: what "within the timeout plus a little" means here.
WITHIN = TIMEOUT + 2.0
TIMEOUT_APP = "tests.timeout_app:create_app()"


@contextmanager
def table_locked(direct: str) -> Iterator[None]:
    """Another session holds the keys table locked against every reader."""
    engine = sa.create_engine(direct, poolclass=sa.NullPool)
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("LOCK TABLE apikey_keys IN ACCESS EXCLUSIVE MODE"))
        else:
            connection.execute(sa.text("LOCK TABLES apikey_keys WRITE"))
        try:
            yield
        finally:
            if engine.dialect.name == "postgresql":
                connection.rollback()
            else:
                connection.execute(sa.text("UNLOCK TABLES"))
    engine.dispose()


def test_a_locked_keys_table_gets_503_within_the_timeout(
    proxied_server: tuple[TcpProxy, str, str],
) -> None:
    _, _, direct = proxied_server
    key = seed_key(direct)
    env = {"APIKEY_DATABASE_URL": direct, "APIKEY_TEST_TIMEOUT": str(TIMEOUT)}
    with gunicorn(TIMEOUT_APP, env, workers=1) as server:
        assert_serves(server, key)
        with table_locked(direct):
            assert_fails_closed(server, key, bound=WITHIN)
            assert_fails_closed(server, key, bound=WITHIN)
            assert request(f"{server.base}/health")[0] == 200
        assert_serves(server, key)
    assert [status for _, status, path in server.log if path == "/v1/clients"] == [
        200,
        503,
        503,
        200,
    ]


def test_a_connection_that_stops_answering_gets_503_within_the_timeout(
    proxied_server: tuple[TcpProxy, str, str],
) -> None:
    proxy, url, _ = proxied_server
    key = seed_key(url)
    env = {"APIKEY_DATABASE_URL": url, "APIKEY_TEST_TIMEOUT": str(TIMEOUT)}
    with gunicorn(TIMEOUT_APP, env, workers=1) as server:
        assert_serves(server, key)
        proxy.freeze()  # the pooled connection stays open; nothing answers on it
        assert_fails_closed(server, key, bound=WITHIN)
        assert_fails_closed(server, key, bound=WITHIN)  # a new connection hangs too
        proxy.forward()
        assert_serves(server, key)


def test_terminated_backends_do_not_fail_requests(
    proxied_postgres: tuple[TcpProxy, str],
) -> None:
    _, url = proxied_postgres
    direct = server_url("postgresql")
    key = seed_key(url)
    with gunicorn(APP, {"APIKEY_DATABASE_URL": url}, workers=2) as server:
        for _ in range(6):
            assert_serves(server, key)
        admin = sa.create_engine(direct, poolclass=sa.NullPool)
        with admin.connect() as connection:
            killed = connection.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND client_addr IS NOT NULL AND application_name = ''"
                )
            ).scalar_one()
        admin.dispose()
        assert killed >= 1
        for _ in range(6):
            assert_serves(server, key)


def test_sqlite_write_lock_of_another_process_does_not_stop_reads(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"
    key = seed_key(url)
    with gunicorn(APP, {"APIKEY_DATABASE_URL": url}, workers=1) as server:
        assert_serves(server, key)
        ordinary = sqlite3.connect(path, isolation_level=None)
        ordinary.execute("BEGIN IMMEDIATE")  # a writer: readers go on in WAL mode
        assert_serves(server, key)
        ordinary.execute("ROLLBACK")
        ordinary.close()

        assert_serves(server, key)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_exhausted_pool_answers_503_at_its_timeout_then_recovers(
    backend: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'pool.db'}"
    else:
        url = server_url("postgresql")
        metadata.drop_all(sa.create_engine(url, poolclass=sa.NullPool))
    key = seed_key(url)
    with gunicorn(
        "tests.pool_app:create_app()",
        {"APIKEY_DATABASE_URL": url},
        workers=1,
        extra=("--worker-class", "gthread", "--threads", "4"),
    ) as server:
        assert_serves(server, key)
        holder = threading.Thread(
            target=request, args=(f"{server.base}/hold?seconds=4",), kwargs={"timeout": 30}
        )
        holder.start()
        try:
            time.sleep(1.0)  # the holder's request takes the connection
            # The pool's only connection is taken: no wait past the pool
            # timeout, and the app is never reached.
            assert_fails_closed(server, key, bound=POOL_TIMEOUT + 2.0)
            assert_fails_closed(server, key, bound=POOL_TIMEOUT + 2.0)
        finally:
            holder.join(timeout=30)
        assert_serves(server, key)
    # After the server stopped, so that its whole access log has been read.
    assert [status for _, status, path in server.log if path == "/v1/clients"] == [
        200,
        503,
        503,
        200,
    ]
    if backend == "postgresql":
        metadata.drop_all(sa.create_engine(url, poolclass=sa.NullPool))


def requests_logged(url: str, key_id: str) -> int:
    store = SQLAlchemyKeyStore(url)
    try:
        return sum(row.requests for row in store.usage(key_id))
    finally:
        store.close()


def serve_through_outage(
    guarded: ApiKeyMiddleware, key: str, outage: t.Callable[[], object], end: t.Callable[[], object]
) -> None:
    """Three requests logged, five more during a write outage, then recovery."""
    writer = guarded.usage
    assert writer is not None
    client = Client(guarded)
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(3):
        assert client.get("/v1/clients", headers=headers).status_code == 200
    wait_until(lambda: writer.written == 3, timeout=20)

    outage()
    for _ in range(5):
        assert client.get("/v1/clients", headers=headers).status_code == 200
    time.sleep(1.5)  # several failed write attempts by the writer thread
    assert writer.written == 3
    assert writer.pending == 5
    assert writer.running

    end()
    wait_until(lambda: writer.written == 8, timeout=20)
    assert writer.dropped == 0
    assert writer.running


def test_usage_writes_outlive_a_postgres_outage_without_failing_requests(
    proxied_postgres: tuple[TcpProxy, str],
    caplog: pytest.LogCaptureFixture,
    store_factory: StoreFactory,
) -> None:
    proxy, proxied_url = proxied_postgres
    key = seed_key(proxied_url)
    # Requests read keys directly; only the usage writer goes through the
    # proxy, so its outage is all that fails.
    reader = store_factory(server_url("postgresql"), schema=False)
    logs_to = store_factory(proxied_url, timeout=1.0, schema=False)
    guarded = ApiKeyMiddleware(
        legacy_app.clients_app, reader, usage_writer=UsageWriter(logs_to, interval=0.2)
    )
    with caplog.at_level(logging.ERROR, logger="apikey_middleware"):
        serve_through_outage(guarded, key, proxy.refuse, proxy.forward)
    assert "could not write 5 usage rows, will retry: OperationalError" in caplog.text
    assert key not in caplog.text
    guarded.close()
    key_id = parse_key(key).key_id  # type: ignore[union-attr]
    assert requests_logged(proxied_url, key_id) == 8


def test_usage_writes_outlive_another_sqlite_writer_without_failing_requests(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    store_factory: StoreFactory,
) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"
    key = seed_key(url)
    store = store_factory(url, timeout=0.3, schema=False)
    guarded = ApiKeyMiddleware(
        legacy_app.clients_app, store, usage_writer=UsageWriter(store, interval=0.2)
    )
    other = sqlite3.connect(path, isolation_level=None)
    with caplog.at_level(logging.ERROR, logger="apikey_middleware"):
        serve_through_outage(
            guarded,
            key,
            lambda: other.execute("BEGIN IMMEDIATE"),
            lambda: other.execute("ROLLBACK"),
        )
    other.close()
    assert "could not write 5 usage rows, will retry: OperationalError" in caplog.text
    guarded.close()
    key_id = parse_key(key).key_id  # type: ignore[union-attr]
    assert requests_logged(url, key_id) == 8
