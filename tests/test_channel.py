"""Channel mode: rows kept in memory, reread only when the database changed.

The reader store is in channel mode; changes come from another store with
its own engine and connections, as from another process.
"""

from __future__ import annotations

import subprocess
import sys
import time
import typing as t
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from apikey_middleware import InvalidKeyError, SQLAlchemyKeyStore
from apikey_middleware.changes import (
    PollingChannel,
    PostgresNotifications,
    SQLiteDataVersion,
)
from apikey_middleware.keys import ParsedKey, generate_key

from .conftest import TEST_ROUNDS, Statements, StoreFactory, parsed, server_url, wait_until
from .servers import TcpProxy

POLL = 0.5


def accepts(store: SQLAlchemyKeyStore, key: ParsedKey) -> bool:
    try:
        store.authenticate(key)
    except InvalidKeyError:
        return False
    return True


@pytest.fixture
def admin(store: SQLAlchemyKeyStore) -> SQLAlchemyKeyStore:
    """The store that makes changes (immediate mode, its own engine)."""
    return store


@pytest.fixture
def reader(database_url: str, admin: SQLAlchemyKeyStore) -> Iterator[SQLAlchemyKeyStore]:
    store = SQLAlchemyKeyStore(
        database_url, bcrypt_rounds=TEST_ROUNDS, revocation="channel", poll_interval=POLL
    )
    assert store.channel is not None
    channel = store.channel
    wait_until(lambda: channel.token() is not None)
    yield store
    store.close()


def test_the_channel_suits_the_database(reader: SQLAlchemyKeyStore) -> None:
    expected = {
        "sqlite": SQLiteDataVersion,
        "postgresql": PostgresNotifications,
        "mysql": PollingChannel,
    }[reader.engine.dialect.name]
    assert isinstance(reader.channel, expected)


def test_a_row_is_read_once_while_nothing_changes(
    reader: SQLAlchemyKeyStore, admin: SQLAlchemyKeyStore
) -> None:
    channel = reader.channel
    assert channel is not None
    before = channel.token()
    key = parsed(admin.create_key("n").key)
    if isinstance(channel, PostgresNotifications):
        wait_until(lambda: channel.token() != before)  # the creation is heard first
    unknown = generate_key("test")
    reads = Statements(reader)
    tokens = set()
    for _ in range(20):
        tokens.add(channel.token())
        assert accepts(reader, key)
        assert not accepts(reader, unknown)
    tokens.add(channel.token())
    # Both rows read once per token: once, unless a MySQL poll slice ended
    # meanwhile.
    assert None not in tokens
    assert 2 <= reads.key_reads <= 2 * len(tokens)
    if not isinstance(channel, PollingChannel):
        assert reads.key_reads == 2


def test_a_revoke_elsewhere_is_seen(reader: SQLAlchemyKeyStore, admin: SQLAlchemyKeyStore) -> None:
    issued = admin.create_key("n")
    key = parsed(issued.key)
    assert accepts(reader, key)
    admin.revoke(issued.id)
    if isinstance(reader.channel, SQLiteDataVersion):
        assert not accepts(reader, key)  # the very next request
        return
    bound = POLL if isinstance(reader.channel, PollingChannel) else 2.0
    assert wait_until(lambda: not accepts(reader, key)) <= bound + 0.2
    for _ in range(5):
        assert not accepts(reader, key)


def test_a_rotation_elsewhere_is_seen(
    reader: SQLAlchemyKeyStore, admin: SQLAlchemyKeyStore
) -> None:
    issued = admin.create_key("n", scopes=["a"])
    old = parsed(issued.key)
    assert accepts(reader, old)
    new = parsed(admin.rotate(issued.id).key)
    assert accepts(reader, new)
    wait_until(lambda: not accepts(reader, old), timeout=POLL + 2.0)


def test_a_key_created_after_its_id_was_tried_is_accepted(
    reader: SQLAlchemyKeyStore, admin: SQLAlchemyKeyStore
) -> None:
    before = generate_key("test")
    assert not accepts(reader, before)  # remembered as unknown
    issued = admin.create_key("n")
    wait_until(lambda: accepts(reader, parsed(issued.key)), timeout=POLL + 2.0)


def test_expiry_is_checked_on_every_request(
    reader: SQLAlchemyKeyStore, admin: SQLAlchemyKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from apikey_middleware import verifier
    from apikey_middleware._time import utcnow

    expires = utcnow() + timedelta(hours=1)
    issued = admin.create_key("n", expires_at=expires)
    key = parsed(issued.key)
    assert accepts(reader, key)
    reads = Statements(reader)
    # The clock reaches the expiry, however long the checks above took.
    monkeypatch.setattr(verifier, "utcnow", lambda: expires)
    assert not accepts(reader, key)
    assert reads.key_reads <= 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgres_listener_loss_falls_back_to_reading_every_request(
    reader: SQLAlchemyKeyStore, admin: SQLAlchemyKeyStore
) -> None:
    channel = reader.channel
    assert isinstance(channel, PostgresNotifications)
    issued = admin.create_key("n")
    key = parsed(issued.key)
    assert accepts(reader, key)
    with admin.engine.connect() as connection:
        killed = connection.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'apikey-change-listener' "
                "AND datname = current_database()"
            )
        ).scalar_one()
    assert killed >= 1
    # Whatever the listener missed while it was away, a revoke now is seen.
    admin.revoke(issued.id)
    wait_until(lambda: not accepts(reader, key), timeout=2.0)
    wait_until(lambda: channel.token() is not None)
    other = parsed(admin.create_key("m").key)
    time.sleep(0.3)  # the creation's own notification comes and goes
    reads = Statements(reader)
    assert accepts(reader, other)
    assert reads.key_reads == 1
    count = reads.key_reads
    for _ in range(10):
        assert accepts(reader, other)
    assert reads.key_reads == count


def test_sqlite_channel_reopens_after_a_failure(tmp_path: t.Any) -> None:
    channel = SQLiteDataVersion(str(tmp_path / "missing" / "keys.db"))
    assert channel.token() is None  # no such folder: nothing to vouch for
    channel.path = str(tmp_path / "keys.db")
    first = channel.token()
    assert first is not None
    assert channel.token() == first
    channel.close()


def test_rows_kept_are_bounded(tmp_path: t.Any, store_factory: StoreFactory) -> None:
    store = store_factory(f"sqlite:///{tmp_path / 'keys.db'}", revocation="channel", cache_size=50)
    for _ in range(500):
        assert not accepts(store, generate_key("test"))
    assert store.verifier.rows_cached == 50


def test_unknown_revocation_mode_is_refused(tmp_path: t.Any) -> None:
    with pytest.raises(ValueError, match="revocation must be one of immediate, channel"):
        SQLAlchemyKeyStore(f"sqlite:///{tmp_path / 'k.db'}", revocation="lazy")  # type: ignore[arg-type]


def revoke_by_hand(url: str, key_id: str) -> None:
    """Revoke with plain SQL from another process, not through the store."""
    script = (
        "import sys, sqlalchemy as sa\n"
        "engine = sa.create_engine(sys.argv[1])\n"
        "with engine.begin() as connection:\n"
        "    connection.execute(sa.text("
        "'UPDATE apikey_keys SET revoked_at = created_at WHERE id = :id'), {'id': sys.argv[2]})\n"
    )
    subprocess.run([sys.executable, "-c", script, url, key_id], check=True, timeout=60)  # noqa: S603


def test_a_revoke_by_plain_sql_in_another_process_is_seen(
    reader: SQLAlchemyKeyStore, admin: SQLAlchemyKeyStore, database_url: str
) -> None:
    issued = admin.create_key("n")
    key = parsed(issued.key)
    assert accepts(reader, key)
    assert accepts(reader, key)  # from memory now
    revoke_by_hand(database_url, issued.id)
    if isinstance(reader.channel, SQLiteDataVersion):
        assert not accepts(reader, key)  # the very next request
        return
    # PostgreSQL: the table's trigger announces it; MySQL: the next poll.
    bound = POLL if isinstance(reader.channel, PollingChannel) else 2.0
    assert wait_until(lambda: not accepts(reader, key)) <= bound + 0.2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_moving_last_used_at_is_not_announced(
    reader: SQLAlchemyKeyStore, admin: SQLAlchemyKeyStore
) -> None:
    channel = reader.channel
    assert channel is not None
    issued = admin.create_key("n")
    time.sleep(0.3)  # the creation's own notification comes and goes
    before = channel.token()
    with admin.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE apikey_keys SET last_used_at = created_at WHERE id = :id"),
            {"id": issued.id},
        )
    time.sleep(0.3)
    assert channel.token() == before
    with admin.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE apikey_keys SET scopes = 'x' WHERE id = :id"), {"id": issued.id}
        )
    wait_until(lambda: channel.token() != before, timeout=2.0)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_create_schema_again_keeps_one_trigger(admin: SQLAlchemyKeyStore) -> None:
    admin.create_schema()
    admin.create_schema()
    with admin.engine.connect() as connection:
        names = connection.execute(
            sa.text(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'apikey_keys'::regclass"
                " AND NOT tgisinternal ORDER BY tgname"
            )
        ).scalars()
        assert list(names) == ["apikey_keys_changed", "apikey_keys_truncated"]


@pytest.mark.parametrize(
    ("url", "mode"),
    [
        ("sqlite:///{folder}/keys.db", "channel"),
        ("sqlite://", "immediate"),
        ("sqlite:///file:{folder}/uri.db?uri=true", "immediate"),
    ],
)
def test_sqlite_files_default_to_channel_mode_and_nothing_else_does(
    tmp_path: t.Any, url: str, mode: str
) -> None:
    store = SQLAlchemyKeyStore(url.format(folder=tmp_path), bcrypt_rounds=TEST_ROUNDS)
    assert store.revocation == mode
    assert (store.channel is not None) == (mode == "channel")
    store.close()


def test_the_default_sqlite_store_refuses_at_once_a_key_revoked_by_hand_elsewhere(
    sqlite_url: str, store_factory: StoreFactory
) -> None:
    server = store_factory(sqlite_url)  # the defaults
    assert isinstance(server.channel, SQLiteDataVersion)
    issued = server.create_key("n")
    key = parsed(issued.key)
    for _ in range(3):
        assert accepts(server, key)
    reads = Statements(server)
    assert accepts(server, key)
    assert reads.key_reads == 0  # from memory while nothing changes
    revoke_by_hand(sqlite_url, issued.id)
    assert not accepts(server, key)


@pytest.mark.parametrize("database_url", ["postgresql", "mysql"], indirect=True)
def test_database_servers_default_to_immediate_mode(store: SQLAlchemyKeyStore) -> None:
    assert store.revocation == "immediate"
    assert store.channel is None


def test_a_frozen_postgres_listener_stops_vouching_for_rows_within_two_heartbeats() -> None:
    """A connection that stops answering without closing (a frozen network
    path) must not keep the channel's promise alive: after two heartbeats
    without an answer, every request reads its row."""
    url = sa.make_url(server_url("postgresql"))
    proxy = TcpProxy(url.port or 5432)
    engine = sa.create_engine(url.set(port=proxy.port), poolclass=sa.NullPool)
    channel = PostgresNotifications(engine)
    try:
        wait_until(lambda: channel.token() is not None)
        proxy.freeze()
        time.sleep(channel.DEAF_AFTER * channel.heartbeat + 0.2)
        assert channel.token() is None
        assert channel.DEAF_AFTER * channel.heartbeat <= 1.0
    finally:
        channel.close()
        proxy.close()
        engine.dispose()
