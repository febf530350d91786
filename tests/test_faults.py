"""Faults fail closed: when the store cannot answer, nothing reaches the app."""

from __future__ import annotations

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
from apikey_middleware.keys import ParsedKey, generate_key
from apikey_middleware.principal import Principal

from .conftest import TEST_ROUNDS, server_url
from .servers import TcpProxy
from .test_middleware import RecordingApp, bearer

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
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = RecordingApp()
    silent = TcpProxy(1)
    silent.hang()  # connections are accepted, and nothing ever answers
    store = SQLAlchemyKeyStore(url.format(port=silent.port), bcrypt_rounds=TEST_ROUNDS, timeout=1)
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
    store.close()


def test_uninitialised_database_gets_503(sqlite_url: str) -> None:
    app = RecordingApp()
    store = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS)
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


def test_exhausted_pool_gets_503_then_recovers(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    store = SQLAlchemyKeyStore(engine, bcrypt_rounds=TEST_ROUNDS)
    store.create_schema()
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


def test_fault_in_optional_mode_reaches_the_app_without_principal(sqlite_url: str) -> None:
    app = RecordingApp()
    store = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS)  # no tables
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
