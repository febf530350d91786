"""bcrypt runs once per key per process, a wrong key costs it once, and
checks at once are bounded; the row is still read every time."""

from __future__ import annotations

import threading
import time

import bcrypt
import pytest
import sqlalchemy as sa

from apikey_middleware import InvalidKeyError, ServiceUnavailableError, SQLAlchemyKeyStore
from apikey_middleware.keys import ParsedKey, generate_key, parse_key
from apikey_middleware.store import ApiKey

from .conftest import TEST_ROUNDS, Statements


class CountingCheckpw:
    """The real ``bcrypt.checkpw``, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._checkpw = bcrypt.checkpw

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls += 1
        return bool(self._checkpw(password, hashed))


@pytest.fixture
def checkpw(monkeypatch: pytest.MonkeyPatch) -> CountingCheckpw:
    counter = CountingCheckpw()
    monkeypatch.setattr(bcrypt, "checkpw", counter)
    return counter


def stored_hash(store: SQLAlchemyKeyStore, key_id: str) -> str:
    with store.engine.connect() as connection:
        return str(
            connection.execute(sa.select(ApiKey.key_hash).where(ApiKey.id == key_id)).scalar_one()
        )


def set_hash(store: SQLAlchemyKeyStore, key_id: str, key_hash: str) -> None:
    with store.engine.begin() as connection:
        connection.execute(sa.update(ApiKey).where(ApiKey.id == key_id).values(key_hash=key_hash))


def clear_check(store: SQLAlchemyKeyStore, key_id: str) -> None:
    """Make the row look like one from before check values existed."""
    with store.engine.begin() as connection:
        connection.execute(sa.update(ApiKey).where(ApiKey.id == key_id).values(key_check=None))


def parsed(key: str) -> ParsedKey:
    result = parse_key(key)
    assert result is not None
    return result


def test_bcrypt_runs_once_per_verified_key(
    sqlite_store: SQLAlchemyKeyStore, checkpw: CountingCheckpw
) -> None:
    key = parsed(sqlite_store.create_key("n").key)
    principals = {sqlite_store.authenticate(key) for _ in range(5)}
    assert len(principals) == 1
    assert checkpw.calls == 1


def test_a_repeated_wrong_key_costs_one_bcrypt_and_is_never_remembered_as_right(
    sqlite_store: SQLAlchemyKeyStore, checkpw: CountingCheckpw
) -> None:
    issued = sqlite_store.create_key("n")
    clear_check(sqlite_store, issued.id)  # only such rows ever run bcrypt for a wrong key
    wrong = generate_key("test", issued.id)
    for _ in range(3):
        with pytest.raises(InvalidKeyError):
            sqlite_store.authenticate(wrong)
    assert checkpw.calls == 1
    assert sqlite_store.authenticate(parsed(issued.key)).key_id == issued.id
    with pytest.raises(InvalidKeyError):
        sqlite_store.authenticate(wrong)
    assert checkpw.calls == 2


def test_failure_memory_is_tied_to_the_stored_hash(
    sqlite_store: SQLAlchemyKeyStore, checkpw: CountingCheckpw
) -> None:
    issued = sqlite_store.create_key("n")
    other = sqlite_store.create_key("other")
    key = parsed(issued.key)
    # The key's own hash replaced by another: the right key now fails...
    good_hash = stored_hash(sqlite_store, issued.id)
    set_hash(sqlite_store, issued.id, stored_hash(sqlite_store, other.id))
    with pytest.raises(InvalidKeyError):
        sqlite_store.authenticate(key)
    # ...and works again, checked afresh, once the hash is put back.
    set_hash(sqlite_store, issued.id, good_hash)
    assert sqlite_store.authenticate(key).key_id == issued.id
    assert checkpw.calls == 2


def test_failure_memory_is_bounded(sqlite_url: str, checkpw: CountingCheckpw) -> None:
    store = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS, cache_size=3)
    store.create_schema()
    issued = store.create_key("n")
    clear_check(store, issued.id)
    for _ in range(10):
        with pytest.raises(InvalidKeyError):
            store.authenticate(generate_key("test", issued.id))
    assert checkpw.calls == 10
    assert len(store._failed) == 3
    store.close()


def test_bcrypt_checks_at_once_are_bounded(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS, bcrypt_concurrency=2)
    store.create_schema()
    issued = store.create_key("n")
    clear_check(store, issued.id)
    running = 0
    most = 0
    lock = threading.Lock()
    checkpw = bcrypt.checkpw

    def slow_checkpw(password: bytes, hashed: bytes) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return bool(checkpw(password, hashed))

    monkeypatch.setattr(bcrypt, "checkpw", slow_checkpw)

    def guess() -> None:
        with pytest.raises(InvalidKeyError):
            store.authenticate(generate_key("test", issued.id))

    threads = [threading.Thread(target=guess) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2
    store.close()


def test_a_bcrypt_check_that_waits_too_long_is_a_503(sqlite_url: str) -> None:
    store = SQLAlchemyKeyStore(
        sqlite_url, bcrypt_rounds=TEST_ROUNDS, bcrypt_concurrency=1, timeout=0.1
    )
    store.create_schema()
    issued = store.create_key("n")
    store._bcrypt_slots.acquire()  # another check holds the only slot
    with pytest.raises(ServiceUnavailableError):
        store.authenticate(parsed(issued.key))
    store._bcrypt_slots.release()
    assert store.authenticate(parsed(issued.key)).key_id == issued.id
    store.close()


@pytest.mark.parametrize("concurrency", [0, -1, "2", True])
def test_bad_bcrypt_concurrency_is_refused(sqlite_url: str, concurrency: object) -> None:
    with pytest.raises(ValueError, match="bcrypt_concurrency"):
        SQLAlchemyKeyStore(sqlite_url, bcrypt_concurrency=concurrency)  # type: ignore[arg-type]


def test_memory_is_tied_to_the_stored_row(
    sqlite_store: SQLAlchemyKeyStore, checkpw: CountingCheckpw
) -> None:
    first = sqlite_store.create_key("first")
    second = sqlite_store.create_key("second")
    key = parsed(first.key)
    sqlite_store.authenticate(key)
    set_hash(sqlite_store, first.id, stored_hash(sqlite_store, second.id))
    with pytest.raises(InvalidKeyError):
        sqlite_store.authenticate(key)
    assert checkpw.calls == 2


def test_changed_scopes_are_seen_at_once(sqlite_store: SQLAlchemyKeyStore) -> None:
    issued = sqlite_store.create_key("n", scopes=["a"])
    key = parsed(issued.key)
    assert sqlite_store.authenticate(key).scopes == {"a"}
    with sqlite_store.engine.begin() as connection:
        connection.execute(sa.update(ApiKey).values(scopes="b"))
    assert sqlite_store.authenticate(key).scopes == {"b"}


def test_memory_is_bounded(sqlite_url: str, checkpw: CountingCheckpw) -> None:
    store = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS, cache_size=2)
    store.create_schema()
    keys = [parsed(store.create_key(f"k{n}").key) for n in range(3)]
    for key in keys:
        store.authenticate(key)
    store.authenticate(keys[0])  # forgotten: the oldest of three in a memory of two
    assert checkpw.calls == 4
    assert len(store._verified) == 2
    store.close()


def test_cache_size_zero_runs_bcrypt_every_time(sqlite_url: str, checkpw: CountingCheckpw) -> None:
    store = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS, cache_size=0)
    store.create_schema()
    key = parsed(store.create_key("n").key)
    store.authenticate(key)
    store.authenticate(key)
    assert checkpw.calls == 2
    store.close()


def test_memory_holds_no_key(sqlite_store: SQLAlchemyKeyStore) -> None:
    issued = sqlite_store.create_key("n")
    sqlite_store.authenticate(parsed(issued.key))
    remembered = repr(list(sqlite_store._verified._data.items()))
    assert issued.key not in remembered
    assert issued.key[23:-6] not in remembered


@pytest.mark.parametrize("size", [-1, "10", 1.5])
def test_bad_cache_size_is_refused(sqlite_url: str, size: object) -> None:
    with pytest.raises(ValueError, match="cache size"):
        SQLAlchemyKeyStore(sqlite_url, cache_size=size)  # type: ignore[arg-type]


def test_malformed_tokens_cost_no_database_or_bcrypt_work(
    sqlite_store: SQLAlchemyKeyStore, checkpw: CountingCheckpw
) -> None:
    issued = sqlite_store.create_key("n")
    sqlite_store.authenticate(issued.key)  # verified and remembered
    statements = Statements(sqlite_store)
    flipped = issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")
    for token in (
        "",
        "sk_test_",
        flipped,
        issued.key.replace("sk_test_", "sk_prod_"),
        issued.key + " ",
        issued.key[:-1],
        "x" * 57,
        issued.key.upper(),
    ):
        with pytest.raises(InvalidKeyError):
            sqlite_store.authenticate(token)
    assert statements.seen == []
    assert checkpw.calls == 1


def test_a_remembered_key_is_refused_once_it_expires(
    sqlite_store: SQLAlchemyKeyStore, checkpw: CountingCheckpw
) -> None:
    from datetime import timedelta

    from apikey_middleware.store import utcnow

    issued = sqlite_store.create_key("n", expires_at=utcnow() + timedelta(seconds=0.5))
    assert sqlite_store.authenticate(issued.key).key_id == issued.id
    time.sleep(0.6)
    with pytest.raises(InvalidKeyError):
        sqlite_store.authenticate(issued.key)
    assert checkpw.calls == 1


def test_new_wrong_secrets_for_a_real_id_run_no_bcrypt_from_the_first_request(
    store: SQLAlchemyKeyStore, checkpw: CountingCheckpw
) -> None:
    issued = store.create_key("n", key_type="live")
    # A process that has never seen the key: nothing remembered.
    fresh = SQLAlchemyKeyStore(store.engine, bcrypt_rounds=TEST_ROUNDS)
    for _ in range(200):
        with pytest.raises(InvalidKeyError):
            fresh.authenticate(generate_key("live", issued.id).key)
    assert checkpw.calls == 0
    assert fresh.authenticate(issued.key).key_id == issued.id
    assert checkpw.calls == 1


def test_check_value_is_short_keyed_by_the_pepper_and_not_the_key(sqlite_url: str) -> None:
    peppered = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS, pepper=b"one")
    peppered.create_schema()
    issued = peppered.create_key("n")
    with peppered.engine.connect() as connection:
        stored = connection.execute(sa.select(ApiKey.key_check)).scalar_one()
    assert stored == peppered.hasher.check_value(issued.key)
    assert len(stored) == 12
    assert int(stored, 16) >= 0
    assert stored not in issued.key
    other = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS, pepper=b"two")
    assert other.hasher.check_value(issued.key) != stored
    with pytest.raises(InvalidKeyError):
        other.authenticate(issued.key)
    other.close()
    peppered.close()
