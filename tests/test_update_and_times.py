"""update_key, and times given as an aware datetime or a timedelta from now."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from apikey_middleware import InvalidKeyError, KeyNotFoundError, SQLAlchemyKeyStore
from apikey_middleware.records import UNSET
from apikey_middleware.usage import UsageRecord

from .conftest import StoreFactory, parsed, wait_until


def close_to(value: datetime | None, expected: datetime) -> bool:
    return value is not None and abs(value - expected) < timedelta(seconds=5)


def test_expires_at_takes_a_timedelta_from_now(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n", expires_at=timedelta(days=30))
    assert close_to(issued.record.expires_at, datetime.now(UTC) + timedelta(days=30))
    assert store.get_key(issued.id) == issued.record


@pytest.mark.parametrize(
    "expires_at",
    [
        pytest.param(timedelta(0), id="zero"),
        pytest.param(timedelta(days=-1), id="negative"),
        pytest.param(datetime.now(UTC) - timedelta(seconds=1), id="past"),
        pytest.param(datetime(2001, 1, 1, tzinfo=timezone(timedelta(hours=2))), id="past-offset"),
    ],
)
def test_an_expiry_not_in_the_future_is_a_value_error(
    store: SQLAlchemyKeyStore, expires_at: datetime | timedelta
) -> None:
    with pytest.raises(ValueError, match="expires_at must"):
        store.create_key("n", expires_at=expires_at)
    assert store.list_keys(include_revoked=True) == []


def test_a_naive_or_odd_expiry_is_a_value_error(store: SQLAlchemyKeyStore) -> None:
    for value in (datetime(2999, 1, 1), "2999-01-01", 30):
        with pytest.raises(ValueError, match="timezone-aware datetime or a timedelta"):
            store.create_key("n", expires_at=value)  # type: ignore[arg-type]


def test_usage_since_takes_a_timedelta_into_the_past(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    now = datetime.now(UTC)
    rows = [
        UsageRecord(issued.id, now - timedelta(days=days), "GET", "/", 200, None) for days in (0, 2)
    ]
    store.record_usage(rows)
    assert [row.occurred_at for row in store.usage(issued.id, since=timedelta(days=1))] == [
        rows[0].occurred_at
    ]
    assert len(store.usage(issued.id, since=timedelta(days=3))) == 2
    with pytest.raises(ValueError, match="negative"):
        store.usage(issued.id, since=timedelta(days=-1))


def test_update_key_changes_what_is_given_and_nothing_else(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key(
        "before", key_type="live", scopes=["a:read"], owner="acme", expires_at=timedelta(days=1)
    )
    record = store.update_key(issued.id, name="after")
    assert record == store.get_key(issued.id)
    assert (record.name, record.scopes, record.owner, record.key_type) == (
        "after",
        ("a:read",),
        "acme",
        "live",
    )
    assert record.expires_at == issued.record.expires_at
    record = store.update_key(issued.id, scopes=["a:write", "a:read"], expires_at=timedelta(days=9))
    assert record.scopes == ("a:read", "a:write")
    assert close_to(record.expires_at, datetime.now(UTC) + timedelta(days=9))
    assert store.update_key(issued.id, expires_at=None).expires_at is None
    assert store.update_key(issued.id, name=UNSET) == store.get_key(issued.id)


def test_update_key_refuses_bad_values_unknown_ids_and_revoked_keys(
    store: SQLAlchemyKeyStore,
) -> None:
    issued = store.create_key("n", scopes=["a:read"])
    with pytest.raises(ValueError, match="expires_at must be in the future"):
        store.update_key(issued.id, expires_at=timedelta(0))
    with pytest.raises(ValueError, match="invalid scope"):
        store.update_key(issued.id, scopes=["two words"])
    with pytest.raises(ValueError, match="name must"):
        store.update_key(issued.id, name="")
    assert store.get_key(issued.id) == issued.record
    with pytest.raises(KeyNotFoundError):
        store.update_key("a" * 14, name="x")
    store.revoke(issued.id)
    with pytest.raises(ValueError, match="revoked"):
        store.update_key(issued.id, name="x")


def test_an_update_holds_from_the_next_request_in_another_process(
    database_url: str, store_factory: StoreFactory
) -> None:
    writer = store_factory(database_url)
    issued = writer.create_key("n", scopes=["a:read", "a:write"])
    for mode in ("immediate", "channel"):
        reader = store_factory(database_url, schema=False, revocation=mode, poll_interval=0.2)
        assert reader.authenticate(parsed(issued.key)).scopes == {"a:read", "a:write"}
        writer.update_key(issued.id, scopes=["a:read"])
        if mode == "immediate":
            assert reader.authenticate(parsed(issued.key)).scopes == {"a:read"}
        else:  # within the channel's notice (at once on SQLite, poll on MySQL)
            wait_until(functools.partial(_has_scopes, reader, issued.key, {"a:read"}))
        writer.update_key(issued.id, scopes=["a:read", "a:write"])
    writer.update_key(issued.id, expires_at=timedelta(seconds=1))
    wait_until(lambda: reader.get_key(issued.id).state() == "expired")  # type: ignore[union-attr]
    with pytest.raises(InvalidKeyError):
        reader.authenticate(parsed(issued.key))
    # An expired key may be given a new life.
    writer.update_key(issued.id, expires_at=timedelta(days=1))
    wait_until(lambda: _accepts(reader, issued.key))


def _has_scopes(store: SQLAlchemyKeyStore, key: str, scopes: set[str]) -> bool:
    return store.authenticate(parsed(key)).scopes == scopes


def _accepts(store: SQLAlchemyKeyStore, key: str) -> bool:
    try:
        store.authenticate(parsed(key))
    except InvalidKeyError:
        return False
    return True
