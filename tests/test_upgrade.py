"""A database made by the first release keeps working after an upgrade."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from apikey_middleware import InvalidKeyError
from apikey_middleware._engine import create_store_engine
from apikey_middleware._time import utcnow
from apikey_middleware.cli import main
from apikey_middleware.hashing import KeyHasher
from apikey_middleware.keys import generate_key
from apikey_middleware.leaks import leaks_of
from apikey_middleware.schema import ApiKey, metadata, upgrade

from .conftest import TEST_ROUNDS, StoreFactory
from .legacy_schema import fill_0_1, legacy_metadata

PEPPER = b"upgrade pepper"


@pytest.fixture
def old_database(database_url: str) -> Iterator[tuple[str, str, str]]:
    """A database as 0.1.0 left it: its URL, a live key in it and that key's id."""
    issued = generate_key("live")
    engine = sa.create_engine(database_url)
    legacy_metadata.drop_all(engine)
    fill_0_1(engine, issued.key, issued.key_id, KeyHasher(TEST_ROUNDS, PEPPER), utcnow())
    engine.dispose()
    yield database_url, issued.key, issued.key_id
    engine = sa.create_engine(database_url)
    metadata.drop_all(engine)  # the upgraded tables, new ones included
    legacy_metadata.drop_all(engine)
    engine.dispose()


def test_old_keys_and_usage_survive_the_upgrade(
    old_database: tuple[str, str, str], store_factory: StoreFactory
) -> None:
    url, key, key_id = old_database
    store = store_factory(url, pepper=PEPPER)
    store.create_schema()  # a second run changes nothing
    record = store.get_key(key_id)
    assert record is not None
    assert (record.name, record.key_type, record.scopes, record.owner) == (
        "from 0.1",
        "live",
        ("clients:read",),
        "acme",
    )
    assert record.rate_limit is None  # added by the upgrade: the default applies
    assert store.authenticate(key).key_id == key_id
    old_rows = store.usage(key_id)
    assert sorted(row.status for row in old_rows) == [200, 403]
    assert [row.requests for row in old_rows] == [1, 1]  # one request each
    # The roll-ups added by the upgrade count the old rows too.
    (day,) = store.usage_summary(key_id=key_id, bucket="day")
    assert (day.requests, day.by_status) == (2, {200: 1, 403: 1})
    minutes = store.usage_summary(key_id=key_id, bucket="minute")
    assert [item.start for item in minutes] == [
        old_rows[0].occurred_at.replace(second=0, microsecond=0)
    ]
    assert leaks_of(store, key_id) == []  # the tables 0.1.0 did not have
    assert store.create_key("new").record.id != key_id


def test_old_usage_rows_take_new_requests_beside_them(
    old_database: tuple[str, str, str], store_factory: StoreFactory
) -> None:
    url, _, key_id = old_database
    store = store_factory(url, pepper=PEPPER)
    (old, _) = sorted(store.usage(key_id), key=lambda row: row.status)
    again = old._replace(requests=3)
    store.record_usage([again], batch_id="upgrade-test")
    store.record_usage([again], batch_id="upgrade-test")  # the same batch: nothing more
    rows = store.usage(key_id)
    assert sorted((row.status, row.requests) for row in rows) == [(200, 1), (200, 3), (403, 1)]
    assert sum(item.requests for item in store.usage_summary(key_id=key_id)) == 5


def test_an_old_key_gets_its_check_value_on_first_use(
    old_database: tuple[str, str, str],
    monkeypatch: pytest.MonkeyPatch,
    store_factory: StoreFactory,
) -> None:
    url, key, key_id = old_database
    store = store_factory(url, pepper=PEPPER)
    checks: list[bytes] = []
    checkpw = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        checks.append(password)
        return bool(checkpw(password, hashed))

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    with store.engine.connect() as connection:
        stored = connection.execute(sa.select(ApiKey.key_check)).scalar_one()
    assert stored is None
    # Before its first use, a wrong secret still costs bcrypt...
    with pytest.raises(InvalidKeyError):
        store.authenticate(generate_key("live", key_id).key)
    assert len(checks) == 1
    assert store.authenticate(key).key_id == key_id
    assert len(checks) == 2
    with store.engine.connect() as connection:
        stored = connection.execute(sa.select(ApiKey.key_check)).scalar_one()
    assert stored == store.hasher.check_value(key)
    # ...and after it, in any process, none.
    other = store_factory(url, pepper=PEPPER, schema=False)
    for _ in range(20):
        with pytest.raises(InvalidKeyError):
            other.authenticate(generate_key("live", key_id).key)
    assert len(checks) == 2
    assert other.authenticate(key).key_id == key_id
    assert len(checks) == 3


def test_init_db_tells_which_old_keys_lack_a_check_value(
    old_database: tuple[str, str, str], store_factory: StoreFactory
) -> None:
    url, key, key_id = old_database
    result = CliRunner().invoke(main, ["--database-url", url, "init-db"])
    assert result.exit_code == 0, result.output
    assert "1 key(s) made by an earlier release" in result.stderr
    assert "apikey rotate ID" in result.stderr
    store = store_factory(url, pepper=PEPPER, schema=False)
    assert store.keys_without_check_value() == [key_id]
    store.authenticate(key)  # its first use completes the row
    assert store.keys_without_check_value() == []


RACER = """
import sys, time
from apikey_middleware import SQLAlchemyKeyStore
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
store = SQLAlchemyKeyStore(sys.argv[1])
store.create_schema()
store.close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("state", ["empty", "made"])
def test_workers_that_all_create_the_schema_at_start_up_all_start(
    database_url: str, state: str
) -> None:
    """Six processes call ``create_schema()`` at the same instant, as the
    workers of a server whose app does so at import: every one succeeds,
    on an empty database and on one whose tables (and trigger) exist."""
    engine = sa.create_engine(database_url)
    metadata.drop_all(engine)
    if state == "made":
        with engine.begin() as connection:
            upgrade(connection)
    engine.dispose()
    start = time.time() + 3
    racers = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", RACER, database_url, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [racer.communicate(timeout=120)[0] for racer in racers]
    failed = [output for racer, output in zip(racers, outputs, strict=True) if racer.returncode]
    assert not failed, failed[0]


def test_the_upgrade_on_an_autocommit_sqlite_connection_keeps_its_tables(tmp_path: Path) -> None:
    """The SQLite write lock the upgrade takes is its own to end: on an
    autocommit connection nothing else commits it, and the tables would go
    with the connection, the file locked meanwhile."""
    url = f"sqlite:///{tmp_path / 'autocommit.db'}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        upgrade(connection)
        other = sqlite3.connect(tmp_path / "autocommit.db", timeout=0.1)
        other.execute("CREATE TABLE other_writer (id INTEGER)")  # not locked out
        other.close()
    engine.dispose()
    assert set(metadata.tables) <= set(sa.inspect(sa.create_engine(url)).get_table_names())


def test_a_new_sqlite_file_opened_by_many_at_once_waits_for_wal(tmp_path: Path) -> None:
    """Switching a file to WAL needs it to itself and answers "locked" at
    once, without SQLite's busy timeout: workers opening a new file together
    wait their turn instead of failing."""
    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (id INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.5, holder.execute, ["COMMIT"])
    release.start()
    engine = create_store_engine(f"sqlite:///{path}", timeout=10)
    try:
        with engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    finally:
        engine.dispose()
        release.join()
        holder.close()
    assert mode == "wal"
