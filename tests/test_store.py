"""The key store, run the same on SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from apikey_middleware import (
    InvalidKeyError,
    KeyNotFoundError,
    Principal,
    SQLAlchemyKeyStore,
)
from apikey_middleware.keys import generate_key
from apikey_middleware.schema import ApiKey, metadata

from .conftest import TEST_ROUNDS, StoreFactory, expire_now, parsed


def test_create_schema_is_idempotent(store: SQLAlchemyKeyStore) -> None:
    store.create_schema()
    store.create_schema()
    tables = sa.inspect(store.engine).get_table_names()
    assert "apikey_keys" in tables


def test_metadata_is_public() -> None:
    assert SQLAlchemyKeyStore.metadata is metadata
    assert "apikey_keys" in metadata.tables


def test_created_key_is_returned_once_and_stored_only_as_a_hash(
    store: SQLAlchemyKeyStore,
) -> None:
    issued = store.create_key(
        "billing", key_type="live", scopes=["clients:write", "clients:read"], owner="acme"
    )
    assert issued.key.startswith("sk_live_")
    assert issued.id == issued.record.id == parsed(issued.key).key_id
    record = issued.record
    assert record.name == "billing"
    assert record.key_type == "live"
    assert record.scopes == ("clients:read", "clients:write")
    assert record.owner == "acme"
    assert record.prefix == f"sk_live_{issued.id[:4]}…"
    assert record.revoked_at is None
    assert record.expires_at is None
    assert record.last_used_at is None
    assert record.replaces is None
    assert issued.key not in repr(issued)
    with store.engine.connect() as connection:
        row = connection.execute(sa.select(ApiKey.__table__)).one()
    stored = " ".join(str(value) for value in row)
    assert issued.key not in stored
    assert issued.key[22:] not in stored
    assert row.key_hash.startswith(f"$2b$0{TEST_ROUNDS}$")


def test_record_round_trips_identically(store: SQLAlchemyKeyStore) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=5)))
    issued = store.create_key("n", scopes="a:b", expires_at=expires)
    fetched = store.get_key(issued.id)
    assert fetched == issued.record
    assert fetched is not None
    assert fetched.expires_at == expires
    assert fetched.expires_at.tzinfo is UTC
    assert fetched.created_at.tzinfo is UTC
    assert fetched.created_at.microsecond == issued.record.created_at.microsecond


def test_naive_datetimes_are_refused(store: SQLAlchemyKeyStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.create_key("n", expires_at=datetime(2030, 1, 1))
    assert store.list_keys() == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "x" * 201}, "name", id="long-name"),
        pytest.param({"name": "n", "key_type": "prod"}, "key_type", id="bad-type"),
        pytest.param({"name": "n", "scopes": ["has space"]}, "scope", id="bad-scope"),
        pytest.param({"name": "n", "scopes": [3]}, "scope", id="non-string-scope"),
        pytest.param({"name": "n", "owner": ""}, "owner", id="empty-owner"),
    ],
)
def test_bad_arguments_are_refused_and_change_nothing(
    store: SQLAlchemyKeyStore, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        store.create_key(**arguments)  # type: ignore[arg-type]
    assert store.list_keys(include_revoked=True) == []


def test_get_key_of_unknown_or_malformed_id_is_none(store: SQLAlchemyKeyStore) -> None:
    assert store.get_key("a" * 14) is None
    assert store.get_key("not an id") is None


def test_list_hides_revoked_keys_but_shows_expired_ones(store: SQLAlchemyKeyStore) -> None:
    active = store.create_key("active")
    revoked = store.create_key("revoked")
    expired = store.create_key("expired", expires_at=timedelta(hours=1))
    expire_now(store, expired.id)
    store.revoke(revoked.id)
    listed = store.list_keys()
    assert [record.id for record in listed] == [active.id, expired.id]
    assert [record.state() for record in listed] == ["active", "expired"]
    everything = store.list_keys(include_revoked=True)
    assert [record.id for record in everything] == [active.id, revoked.id, expired.id]
    assert everything[1].state() == "revoked"


def test_list_filters_by_owner(store: SQLAlchemyKeyStore) -> None:
    mine = store.create_key("a", owner="me")
    store.create_key("b", owner="you")
    store.create_key("c")
    assert [record.id for record in store.list_keys(owner="me")] == [mine.id]


def test_revoke_is_final_and_idempotent(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    first = store.revoke(issued.id)
    assert first.revoked_at is not None
    assert first.revoked_at.tzinfo is UTC
    assert store.revoke(issued.id) == first


def test_revoking_an_unknown_key_raises_key_not_found(store: SQLAlchemyKeyStore) -> None:
    with pytest.raises(KeyNotFoundError) as caught:
        store.revoke("a" * 14)
    assert isinstance(caught.value, LookupError)
    assert caught.value.key_id == "a" * 14


def test_key_not_found_never_repeats_a_pasted_key(store: SQLAlchemyKeyStore) -> None:
    key = generate_key("live").key
    with pytest.raises(KeyNotFoundError) as caught:
        store.revoke(key)
    assert key not in str(caught.value)


def test_authenticate_returns_the_principal(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n", key_type="live", scopes=["clients:*"], owner="acme")
    principal = store.authenticate(parsed(issued.key))
    assert principal == Principal(issued.id, "n", "live", frozenset({"clients:*"}), "acme")


def test_authenticate_refuses_unknown_wrong_revoked_and_expired_keys(
    store: SQLAlchemyKeyStore,
) -> None:
    revoked = store.create_key("revoked")
    store.revoke(revoked.id)
    expired = store.create_key("expired", expires_at=timedelta(hours=1))
    expire_now(store, expired.id)
    real = store.create_key("real")
    # Same id, another secret: well formed, passes its checksum.
    wrong_secret = generate_key("test", real.id).key
    for key in (generate_key("test").key, wrong_secret, revoked.key, expired.key):
        with pytest.raises(InvalidKeyError):
            store.authenticate(parsed(key))


def test_revoke_in_one_store_holds_at_once_in_another(
    database_url: str, store_factory: StoreFactory
) -> None:
    # Two stores, two engines and pools: as two processes would have.
    first = store_factory(database_url)
    second = store_factory(database_url, schema=False)
    issued = first.create_key("shared")
    key = parsed(issued.key)
    assert second.authenticate(key).key_id == issued.id
    first.revoke(issued.id)
    with pytest.raises(InvalidKeyError):
        second.authenticate(key)


def test_key_id_collision_draws_again(
    store: SQLAlchemyKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = store.create_key("first").id
    draws = iter([taken, "b" * 14])
    monkeypatch.setattr("apikey_middleware.keys.new_key_id", lambda: next(draws))
    second = store.create_key("second")
    assert second.id == "b" * 14
    assert len(store.list_keys()) == 2


def test_store_repr_hides_the_password(store_factory: StoreFactory) -> None:
    store = store_factory("postgresql+psycopg://user:hunter2@127.0.0.1:1/db", schema=False)
    assert "hunter2" not in repr(store)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("not a url", "cannot parse", id="unparseable"),
        pytest.param("nosuchdb://x/y", "no database driver", id="unknown-backend"),
        pytest.param("postgresql+nosuchdriver://u:hunter2@h/d", "no database driver", id="driver"),
    ],
)
def test_unusable_url_is_a_clear_value_error(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        SQLAlchemyKeyStore(url)
    assert "hunter2" not in str(caught.value)


def test_sqlite_store_uses_wal(sqlite_store: SQLAlchemyKeyStore) -> None:
    with sqlite_store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_in_memory_sqlite_store_works(store_factory: StoreFactory) -> None:
    store = store_factory("sqlite://")
    issued = store.create_key("n")
    assert store.authenticate(parsed(issued.key)).key_id == issued.id


def test_a_missing_driver_of_the_extras_says_what_to_install() -> None:
    from apikey_middleware._engine import driver_hint

    assert "postgresql extra" in driver_hint(sa.make_url("postgresql+psycopg://h/d"))
    assert "'PyMySQL'" in driver_hint(sa.make_url("mysql+pymysql://h/d"))
    assert driver_hint(sa.make_url("postgresql+pg8000://h/d")) == ""
    assert "postgresql+psycopg://" in driver_hint(sa.make_url("postgresql://h/d"))


def test_a_key_rotated_once_is_never_rotated_again(store: SQLAlchemyKeyStore) -> None:
    from apikey_middleware import AlreadyRotatedError

    old = store.create_key("n")
    new = store.rotate(old.id, grace=timedelta(hours=1))
    with pytest.raises(AlreadyRotatedError, match="already rotated") as caught:
        store.rotate(old.id, grace=timedelta(hours=1))
    assert caught.value.successor_id == new.id
    assert isinstance(caught.value, ValueError)
    # Its successor may be rotated in turn.
    store.rotate(new.id)
    assert [record.replaces for record in store.list_keys(include_revoked=True)].count(old.id) == 1


def test_concurrent_rotations_of_one_key_make_one_successor(store: SQLAlchemyKeyStore) -> None:
    import threading

    old = store.create_key("n")
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def rotate() -> None:
        barrier.wait()
        try:
            store.rotate(old.id, grace=timedelta(hours=1))
            outcomes.append("rotated")
        except ValueError as error:
            outcomes.append(type(error).__name__)

    threads = [threading.Thread(target=rotate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("rotated") == 1, outcomes
    successors = [r for r in store.list_keys(include_revoked=True) if r.replaces == old.id]
    assert len(successors) == 1
