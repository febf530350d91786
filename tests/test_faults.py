"""Faults fail closed: when the store cannot answer, nothing reaches the app."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from werkzeug.test import Client, TestResponse

from apikey_middleware import ApiKeyMiddleware, IssuedKey, SQLAlchemyKeyStore
from apikey_middleware._watchdog import watchdog_of
from apikey_middleware.keys import ParsedKey, generate_key
from apikey_middleware.principal import Principal

from .conftest import TEST_ROUNDS, RecordingApp, StoreFactory, bearer, server_url
from .servers import TcpProxy

UNAVAILABLE = {
    "success": False,
    "error": {
        "code": "SERVICE_UNAVAILABLE",
        "message": "API key verification is temporarily unavailable, please retry later",
    },
}


def assert_unavailable(response: TestResponse, app: RecordingApp) -> None:
    assert response.status_code == 503
    assert response.json == UNAVAILABLE
    assert response.headers["Retry-After"] == "5"
    assert response.headers["Cache-Control"] == "no-store"
    assert app.environs == []


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql+psycopg://postgres@127.0.0.1:{port}/test", id="postgresql"),
        pytest.param("mysql+pymysql://root@127.0.0.1:{port}/test", id="mysql"),
    ],
)
def test_a_server_that_accepts_and_never_answers_gets_503_within_the_timeout(
    url: str,
    caplog: pytest.LogCaptureFixture,
    store_factory: StoreFactory,
) -> None:
    app = RecordingApp()
    silent = TcpProxy(1)
    silent.hang()  # connections are accepted, and nothing ever answers
    store = store_factory(url.format(port=silent.port), timeout=1, schema=False)
    key = generate_key("live").key
    answers: list[TestResponse] = []
    started = time.monotonic()
    asking = threading.Thread(
        target=lambda: answers.append(
            Client(ApiKeyMiddleware(app, store)).get("/", headers=bearer(key))
        ),
        daemon=True,
    )
    asking.start()
    asking.join(timeout=30)
    took = time.monotonic() - started
    silent.close()
    assert answers, "no answer after 30 s: the connect wait is not bounded"
    assert took < 4, took
    assert_unavailable(answers[0], app)
    assert "store unavailable" in caplog.text
    assert key not in caplog.text
    assert key[22:] not in caplog.text


def test_uninitialised_database_gets_503(sqlite_url: str, store_factory: StoreFactory) -> None:
    app = RecordingApp()
    store = store_factory(sqlite_url, schema=False)
    response = Client(ApiKeyMiddleware(app, store)).get(
        "/", headers=bearer(generate_key("test").key)
    )
    assert_unavailable(response, app)


def test_corrupt_sqlite_file_gets_503(sqlite_store: SQLAlchemyKeyStore, tmp_path: Path) -> None:
    issued = sqlite_store.create_key("n")
    sqlite_store.engine.dispose()
    for path in tmp_path.glob("keys.db*"):
        path.write_bytes(b"this is not a database" * 500)
    app = RecordingApp()
    response = Client(ApiKeyMiddleware(app, sqlite_store)).get("/", headers=bearer(issued.key))
    assert_unavailable(response, app)


def test_exhausted_pool_gets_503_then_recovers(
    sqlite_url: str, store_factory: StoreFactory
) -> None:
    engine = sa.create_engine(sqlite_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    store = store_factory(engine)
    issued = store.create_key("n")
    app = RecordingApp()
    client = Client(ApiKeyMiddleware(app, store))
    with engine.connect():
        started = time.monotonic()
        assert_unavailable(client.get("/", headers=bearer(issued.key)), app)
        assert time.monotonic() - started < 5
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    engine.dispose()


def test_unexpected_store_error_fails_closed(
    sqlite_store: SQLAlchemyKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenStore(SQLAlchemyKeyStore):
        def authenticate(self, key: ParsedKey | str) -> Principal:
            raise RuntimeError("boom")

    broken = BrokenStore(sqlite_store.engine)
    app = RecordingApp()
    key = generate_key("live").key
    with caplog.at_level(logging.ERROR, logger="apikey_middleware"):
        response = Client(ApiKeyMiddleware(app, broken)).get("/", headers=bearer(key))
    assert_unavailable(response, app)
    assert "failed unexpectedly" in caplog.text
    assert key not in caplog.text


def test_fault_in_optional_mode_reaches_the_app_without_principal(
    sqlite_url: str, store_factory: StoreFactory
) -> None:
    app = RecordingApp()
    store = store_factory(sqlite_url, schema=False)  # no tables
    client = Client(ApiKeyMiddleware(app, store, required=False))
    assert client.get("/", headers=bearer(generate_key("test").key)).status_code == 200
    assert app.last["apikey.error"].code == "SERVICE_UNAVAILABLE"
    assert "apikey.principal" not in app.last


def test_reads_go_on_while_another_process_holds_the_sqlite_write_lock(
    sqlite_store: SQLAlchemyKeyStore, tmp_path: Path
) -> None:
    issued = sqlite_store.create_key("n")
    client = Client(ApiKeyMiddleware(RecordingApp(), sqlite_store))
    writer = sqlite3.connect(tmp_path / "keys.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE apikey_keys SET name = 'renamed'")
        assert client.get("/", headers=bearer(issued.key)).status_code == 200
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_revoke_waits_out_a_busy_sqlite_writer(
    sqlite_store: SQLAlchemyKeyStore, tmp_path: Path
) -> None:
    issued = sqlite_store.create_key("n")
    writer = sqlite3.connect(tmp_path / "keys.db", isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: writer.execute("COMMIT"))
    release.start()
    try:
        assert sqlite_store.revoke(issued.id).revoked_at is not None
    finally:
        release.join()
        writer.close()


@pytest.fixture
def postgres_store(tmp_path: Path) -> Iterator[SQLAlchemyKeyStore]:
    url = server_url("postgresql")
    store = SQLAlchemyKeyStore(url, bcrypt_rounds=TEST_ROUNDS)
    store.metadata.drop_all(store.engine)
    store.create_schema()
    yield store
    store.metadata.drop_all(store.engine)
    store.close()


def _terminate_pool_connections(store: SQLAlchemyKeyStore) -> int:
    admin = sa.create_engine(store.engine.url, poolclass=sa.NullPool)
    with admin.connect() as connection:
        killed = connection.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name = ''"
            )
        ).scalar_one()
    admin.dispose()
    return int(killed)


def test_terminated_postgres_connections_are_replaced_without_a_failed_request(
    postgres_store: SQLAlchemyKeyStore,
) -> None:
    issued: IssuedKey = postgres_store.create_key("n")
    client = Client(ApiKeyMiddleware(RecordingApp(), postgres_store))
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    assert _terminate_pool_connections(postgres_store) >= 1
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    assert client.get("/", headers=bearer(issued.key)).status_code == 200


def test_the_watchdog_forgets_every_statement_that_ends_however_it_ends(
    store_factory: StoreFactory,
) -> None:
    store = store_factory(server_url("postgresql"), timeout=1, schema=False)
    watchdog = watchdog_of(store.engine)
    assert watchdog is not None
    for sql in ("SELECT 1", "SELECT pg_sleep(3)", "SELECT * FROM no_such_table", "SELECT 1/0"):
        with contextlib.suppress(sa.exc.DBAPIError), store.engine.connect() as connection:
            connection.exec_driver_sql(sql)
        assert watchdog.watched == 0, sql
    # The server's own timeout ended the long one; the watchdog cut nothing,
    # and the pooled connection still works.
    time.sleep(1.8)
    assert watchdog.cut == 0
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT 2").scalar() == 2


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_after_one_timeout_the_next_requests_are_refused_at_once_until_it_answers(
    backend: str, store_factory: StoreFactory
) -> None:
    direct = sa.make_url(server_url(backend))
    proxy = TcpProxy(direct.port or (5432 if backend == "postgresql" else 3306))
    url = direct.set(port=proxy.port).render_as_string(hide_password=False)
    store = store_factory(url, timeout=1)
    issued = store.create_key("n")
    client = Client(ApiKeyMiddleware(RecordingApp(), store, log_usage=False))
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    proxy.freeze()
    took: list[float] = []
    statuses: list[int] = []

    def ask() -> None:
        started = time.monotonic()
        statuses.append(client.get("/", headers=bearer(issued.key)).status_code)
        took.append(time.monotonic() - started)

    ask()  # finds it hung: one timeout
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [503] * 9
    assert took[0] < 3.0
    # Refused at once, not one timeout each; one of them tries the database
    # meanwhile, and waits.
    quick = sorted(took[1:])
    assert quick[-2] < 0.5, took
    assert quick[-1] < 3.0, took
    proxy.forward()
    assert client.get("/", headers=bearer(issued.key)).status_code == 200  # the next one tries
    proxy.close()


def test_an_outage_is_reported_once_a_minute_not_once_a_request(
    store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused connection fails each request at once: a busy server
    would write a line per request, thousands a minute."""
    direct = sa.make_url(server_url("postgresql"))
    proxy = TcpProxy(direct.port or 5432)
    url = direct.set(port=proxy.port).render_as_string(hide_password=False)
    store = store_factory(url, timeout=1)
    issued = store.create_key("n")
    client = Client(ApiKeyMiddleware(RecordingApp(), store, log_usage=False))
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    with caplog.at_level(logging.WARNING, logger="apikey_middleware"):
        proxy.refuse()
        statuses = [client.get("/", headers=bearer(issued.key)).status_code for _ in range(50)]
        assert statuses == [503] * 50
        assert caplog.text.count("API key store unavailable") == 1
        proxy.forward()
        assert client.get("/", headers=bearer(issued.key)).status_code == 200
        assert "API key store answers again (49 more refused since)" in caplog.text
        proxy.refuse()  # a new outage: reported at once
        assert client.get("/", headers=bearer(issued.key)).status_code == 503
        assert caplog.text.count("API key store unavailable") == 2
    proxy.close()
