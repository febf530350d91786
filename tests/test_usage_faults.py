"""Writer outages lose nothing and count nothing twice: a commit whose answer
is lost on the way back, a database that stops answering, a SQLite file
another process holds the write lock of."""

from __future__ import annotations

import logging
import re
import sqlite3

import pytest
import sqlalchemy as sa

from apikey_middleware import SQLAlchemyKeyStore
from apikey_middleware.buckets import BUCKETS
from apikey_middleware.schema import usage_table
from apikey_middleware.usage import UsageWriter

from . import server_databases
from .conftest import StoreFactory
from .servers import TcpProxy, apikey, gunicorn, request

pytestmark = pytest.mark.slow

# A database server behind a fault proxy (shared with the other server tests).
proxied_server = server_databases.proxied_server

SENT = 120
APP = "examples.flask_app:create_app()"


def stored_requests(url: str, key_id: str) -> int:
    """The requests the usage rows stand for, read past the proxy."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        total = connection.execute(
            sa.select(sa.func.coalesce(sa.func.sum(usage_table.c.requests), 0)).where(
                usage_table.c.key_id == key_id
            )
        ).scalar_one()
    engine.dispose()
    return int(total)


def record_many(writer: UsageWriter, key_id: str) -> None:
    for n in range(SENT):
        writer.record(key_id, "GET", f"/v1/clients/{n % 3}", 200 if n % 5 else 404, "10.0.0.1")


def assert_counted_once(store: SQLAlchemyKeyStore, key_id: str) -> None:
    assert sum(row.requests for row in store.usage(key_id)) == SENT
    for bucket in BUCKETS:
        summary = store.usage_summary(key_id=key_id, bucket=bucket)
        assert sum(item.requests for item in summary) == SENT, bucket


def test_a_commit_whose_answer_is_lost_is_not_applied_twice(
    proxied_server: tuple[TcpProxy, str, str],
    store_factory: StoreFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, url, direct = proxied_server
    store = store_factory(url)
    issued = store.create_key("n")
    writer = UsageWriter(store, interval=3600)
    record_many(writer, issued.id)
    proxy.cut_after_commit()
    with caplog.at_level(logging.ERROR, logger="apikey_middleware"):
        writer.flush()
    assert proxy.commits_cut == 1
    assert f"could not write {SENT} usage rows, will retry" in caplog.text
    # The batch is in the database, though the writer could not know it...
    assert stored_requests(direct, issued.id) == SENT
    assert writer.pending == SENT
    writer.flush()  # ...and its retry changes nothing.
    assert writer.pending == 0
    assert writer.written == SENT
    assert writer.dropped == 0
    assert stored_requests(direct, issued.id) == SENT
    assert_counted_once(store, issued.id)
    writer.close()


def test_a_writer_outage_loses_nothing_when_the_database_returns(
    proxied_server: tuple[TcpProxy, str, str],
    store_factory: StoreFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, url, direct = proxied_server
    store = store_factory(url, timeout=1)
    issued = store.create_key("n")
    writer = UsageWriter(store, interval=3600)
    record_many(writer, issued.id)
    proxy.refuse()
    with caplog.at_level(logging.ERROR, logger="apikey_middleware"):
        writer.flush()
        writer.flush()
    assert "will retry" in caplog.text
    assert writer.pending == SENT
    proxy.forward()
    writer.close()
    assert writer.written == SENT
    assert stored_requests(direct, issued.id) == SENT
    assert_counted_once(store, issued.id)


def test_the_sqlite_write_lock_held_elsewhere_delays_the_log_and_loses_nothing(
    sqlite_url: str, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_factory(sqlite_url, timeout=0.2)
    issued = store.create_key("n")
    writer = UsageWriter(store, interval=3600)
    record_many(writer, issued.id)
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with caplog.at_level(logging.ERROR, logger="apikey_middleware"):
        writer.flush()
    assert "database is locked" in caplog.text
    assert writer.pending == SENT
    holder.execute("COMMIT")
    holder.close()
    writer.close()
    assert writer.written == SENT
    assert_counted_once(store, issued.id)


def test_counts_are_exact_across_two_gunicorn_workers(database_url: str) -> None:
    apikey(database_url, "init-db")
    output = apikey(database_url, "create", "--name", "busy", "--scope", "clients:read")
    (key,) = re.findall(r"^\s+(sk_test_[A-Za-z0-9_]+)$", output, re.MULTILINE)
    key_id = key[8:22]
    sent = 0
    with gunicorn(APP, {"APIKEY_DATABASE_URL": database_url}, workers=2) as server:
        headers = {"Authorization": f"Bearer {key}"}
        while sent < 400 or len(server.worker_pids()) < 2:
            assert request(f"{server.base}/v1/clients", headers)[0] == 200
            sent += 1
            assert sent < 2000, "one worker answered every request"
    # The workers wrote what they held when they stopped.
    store = SQLAlchemyKeyStore(database_url)
    try:
        assert sum(row.requests for row in store.usage(key_id)) == sent
        for bucket in BUCKETS:
            summary = store.usage_summary(key_id=key_id, bucket=bucket)
            assert sum(item.requests for item in summary) == sent, bucket
        assert len(store.usage(key_id)) < sent  # identical requests shared rows
    finally:
        store.close()
