"""Faults under a real server and a real database: fail closed, then recover.

The legacy example runs under gunicorn against PostgreSQL reached through a
TCP proxy that can refuse, hang or cut connections, as a stopped, stuck or
restarting server would. The app must never answer while the store cannot,
every refusal must be the 503 JSON with ``Retry-After`` within a bounded
time, and service must come back without a restart.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from apikey_middleware import SQLAlchemyKeyStore
from apikey_middleware.store import metadata

from .conftest import TEST_ROUNDS, server_url
from .servers import Gunicorn, TcpProxy, gunicorn, request

pytestmark = pytest.mark.slow

APP = "examples.legacy_app:create_app()"
UNAVAILABLE = "SERVICE_UNAVAILABLE"
BOUND = 15.0  # seconds: the store's 5 s timeouts, with room for a retry


def timed(server: Gunicorn, key: str) -> tuple[int, dict[str, str], object, float]:
    started = time.monotonic()
    status, headers, body = request(
        f"{server.base}/v1/clients", {"Authorization": f"Bearer {key}"}, timeout=60
    )
    return status, headers, body, time.monotonic() - started


def assert_fails_closed(server: Gunicorn, key: str) -> None:
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
    assert took < BOUND
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
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    metadata.drop_all(engine)
    proxy = TcpProxy(url.port or 5432)
    yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    proxy.close()
    metadata.drop_all(engine)
    engine.dispose()


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
