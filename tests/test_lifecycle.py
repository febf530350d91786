"""Rotation, expiry and usage records in the store, on every database."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from apikey_middleware import InvalidKeyError, KeyNotFoundError, SQLAlchemyKeyStore, verifier
from apikey_middleware.errors import RejectedKeyError
from apikey_middleware.usage import UsageRecord

from .conftest import parsed


def test_rotate_issues_a_new_key_with_the_same_grants(store: SQLAlchemyKeyStore) -> None:
    old = store.create_key("billing", key_type="live", scopes=["clients:read"], owner="acme")
    new = store.rotate(old.id)
    assert new.id != old.id
    assert new.key != old.key
    assert new.key.startswith("sk_live_")
    record = new.record
    assert (record.name, record.key_type, record.scopes, record.owner) == (
        "billing",
        "live",
        ("clients:read",),
        "acme",
    )
    assert record.replaces == old.id
    assert store.get_key(new.id) == record


def test_rotate_without_grace_revokes_the_old_key_at_once(store: SQLAlchemyKeyStore) -> None:
    old = store.create_key("n")
    new = store.rotate(old.id)
    with pytest.raises(InvalidKeyError):
        store.authenticate(parsed(old.key))
    assert store.authenticate(parsed(new.key)).key_id == new.id
    old_record = store.get_key(old.id)
    assert old_record is not None
    assert old_record.state() == "revoked"
    assert [r.id for r in store.list_keys()] == [new.id]
    assert {r.id for r in store.list_keys(include_revoked=True)} == {old.id, new.id}


def test_rotate_with_grace_keeps_both_working_until_it_ends(store: SQLAlchemyKeyStore) -> None:
    old = store.create_key("n")
    before = datetime.now(UTC)
    new = store.rotate(old.id, grace=timedelta(seconds=2))
    assert store.authenticate(parsed(old.key)).key_id == old.id
    assert store.authenticate(parsed(new.key)).key_id == new.id
    old_record = store.get_key(old.id)
    assert old_record is not None
    assert old_record.state() == "active"  # until the grace ends
    assert old_record.expires_at is not None
    assert before + timedelta(seconds=2) <= old_record.expires_at <= before + timedelta(seconds=4)
    time.sleep(max(0.0, (old_record.expires_at - datetime.now(UTC)).total_seconds()) + 0.05)
    with pytest.raises(InvalidKeyError):
        store.authenticate(parsed(old.key))
    assert store.get_key(old.id).state() == "expired"  # type: ignore[union-attr]
    assert store.authenticate(parsed(new.key)).key_id == new.id


def test_grace_never_extends_a_key_that_expires_sooner(store: SQLAlchemyKeyStore) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    old = store.create_key("n", expires_at=soon)
    store.rotate(old.id, grace=timedelta(days=7))
    assert store.get_key(old.id).expires_at == soon  # type: ignore[union-attr]


def test_rotated_key_keeps_the_lifetime_of_the_old_one(store: SQLAlchemyKeyStore) -> None:
    old = store.create_key("n", expires_at=datetime.now(UTC) + timedelta(days=30))
    new = store.rotate(old.id)
    assert new.record.expires_at is not None
    lifetime = new.record.expires_at - new.record.created_at
    assert abs(lifetime - timedelta(days=30)) < timedelta(seconds=5)


def test_rotating_a_revoked_key_is_an_error_and_changes_nothing(
    store: SQLAlchemyKeyStore,
) -> None:
    old = store.create_key("n")
    store.revoke(old.id)
    with pytest.raises(ValueError, match="revoked"):
        store.rotate(old.id)
    assert len(store.list_keys(include_revoked=True)) == 1


def test_rotating_an_unknown_key_raises_key_not_found(store: SQLAlchemyKeyStore) -> None:
    with pytest.raises(KeyNotFoundError):
        store.rotate("z" * 14)


def test_negative_grace_is_refused(store: SQLAlchemyKeyStore) -> None:
    old = store.create_key("n")
    with pytest.raises(ValueError, match="grace"):
        store.rotate(old.id, grace=timedelta(seconds=-1))
    assert len(store.list_keys()) == 1


def test_expired_key_is_rejected_like_a_revoked_one(
    store: SQLAlchemyKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    issued = store.create_key("n", expires_at=expires)
    assert store.authenticate(parsed(issued.key)).key_id == issued.id
    # The clock moves past the expiry, however long the checks above took.
    monkeypatch.setattr(verifier, "utcnow", lambda: expires)
    with pytest.raises(RejectedKeyError):
        store.authenticate(parsed(issued.key))
    monkeypatch.setattr(verifier, "utcnow", lambda: expires - timedelta(microseconds=1))
    assert store.authenticate(parsed(issued.key)).key_id == issued.id


def _usage(key_id: str, at: datetime, status: int = 200, path: str = "/x") -> UsageRecord:
    return UsageRecord(key_id, at, "GET", path, status, "127.0.0.1")


def test_usage_is_newest_first_and_filtered(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    other = store.create_key("other")
    now = datetime.now(UTC).replace(microsecond=123456)
    rows = [_usage(issued.id, now - timedelta(days=n), 200 + n) for n in range(5)]
    store.record_usage([*rows, _usage(other.id, now)])
    assert store.usage(issued.id) == rows
    assert store.usage(issued.id, since=now - timedelta(days=2)) == rows[:3]
    assert store.usage(issued.id, limit=2) == rows[:2]
    assert store.usage(other.id) == [_usage(other.id, now)]
    assert all(row.occurred_at.tzinfo is UTC for row in store.usage(issued.id))


def test_recording_usage_moves_last_used_forward_only(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    now = datetime.now(UTC)
    store.record_usage([_usage(issued.id, now - timedelta(hours=1)), _usage(issued.id, now)])
    assert store.get_key(issued.id).last_used_at == now  # type: ignore[union-attr]
    store.record_usage([_usage(issued.id, now - timedelta(days=1))])
    assert store.get_key(issued.id).last_used_at == now  # type: ignore[union-attr]


def test_long_paths_are_cut_to_fit(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    store.record_usage([_usage(issued.id, datetime.now(UTC), path="/" + "p" * 5000)])
    (row,) = store.usage(issued.id)
    assert len(row.path) == 1000


def test_usage_since_must_be_aware(store: SQLAlchemyKeyStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.usage("a" * 14, since=datetime(2020, 1, 1))
