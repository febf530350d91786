"""bcrypt runs once per key per process, a wrong key costs it once, and
checks at once are bounded; the row is still read every time."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
import types
from collections.abc import Iterator

import bcrypt
import pytest
import sqlalchemy as sa
from werkzeug.test import Client

from apikey_middleware import (
    ApiKeyMiddleware,
    InvalidKeyError,
    SQLAlchemyKeyStore,
    StoreUnavailableError,
    verifier,
)
from apikey_middleware.keys import generate_key
from apikey_middleware.schema import ApiKey

from .conftest import RecordingApp, Statements, StoreFactory, bearer, parsed


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


def test_failure_memory_is_bounded(
    sqlite_url: str,
    checkpw: CountingCheckpw,
    store_factory: StoreFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(verifier, "LEGACY_BUDGET", 100)  # this test is about the memory
    store = store_factory(sqlite_url, cache_size=3)
    issued = store.create_key("n")
    clear_check(store, issued.id)
    for _ in range(10):
        with pytest.raises(InvalidKeyError):
            store.authenticate(generate_key("test", issued.id))
    assert checkpw.calls == 10
    assert store.verifier.failures_remembered == 3


def test_bcrypt_checks_at_once_are_bounded(
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    store_factory: StoreFactory,
) -> None:
    store = store_factory(sqlite_url, bcrypt_concurrency=2)
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


def test_a_bcrypt_check_that_waits_too_long_is_refused_as_unavailable(
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    store_factory: StoreFactory,
) -> None:
    store = store_factory(sqlite_url, bcrypt_concurrency=1, timeout=0.2)
    first, second = store.create_key("first"), store.create_key("second")
    release = threading.Event()
    checkpw = bcrypt.checkpw

    def held(password: bytes, hashed: bytes) -> bool:
        release.wait(10)  # another check holds the only slot
        return bool(checkpw(password, hashed))

    monkeypatch.setattr(bcrypt, "checkpw", held)
    holder = threading.Thread(target=store.authenticate, args=(first.key,))
    holder.start()
    time.sleep(0.1)
    with pytest.raises(StoreUnavailableError):
        store.authenticate(parsed(second.key))
    release.set()
    holder.join()
    assert store.authenticate(parsed(second.key)).key_id == second.id
    assert (
        Client(ApiKeyMiddleware(RecordingApp(), store))
        .get("/", headers=bearer(first.key))
        .status_code
        == 200
    )


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


def test_memory_is_bounded(
    sqlite_url: str, checkpw: CountingCheckpw, store_factory: StoreFactory
) -> None:
    store = store_factory(sqlite_url, cache_size=2)
    keys = [parsed(store.create_key(f"k{n}").key) for n in range(3)]
    for key in keys:
        store.authenticate(key)
    store.authenticate(keys[0])  # forgotten: the oldest of three in a memory of two
    assert checkpw.calls == 4
    assert store.verifier.remembered == 2


def test_cache_size_zero_runs_bcrypt_every_time(
    sqlite_url: str, checkpw: CountingCheckpw, store_factory: StoreFactory
) -> None:
    store = store_factory(sqlite_url, cache_size=0)
    key = parsed(store.create_key("n").key)
    store.authenticate(key)
    store.authenticate(key)
    assert checkpw.calls == 2


_CODE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType)


def _strings_reachable_from(root: object, limit: int = 500_000) -> Iterator[str]:
    """Every string the object graph under ``root`` holds (modules, types
    and functions are not followed: they are code, not state)."""
    seen = {id(root)}
    todo = [root]
    while todo and len(seen) < limit:
        item = todo.pop()
        if isinstance(item, str):
            yield item
            continue
        if isinstance(item, bytes):
            yield item.decode("latin-1")
            continue
        if isinstance(
            item, types.ModuleType | type | types.FunctionType | types.BuiltinFunctionType
        ):
            continue
        for referent in gc.get_referents(item):
            if id(referent) not in seen:
                seen.add(id(referent))
                todo.append(referent)


def test_memory_holds_no_key(sqlite_store: SQLAlchemyKeyStore) -> None:
    issued = sqlite_store.create_key("n")
    for token in (issued.key, generate_key("test", issued.id).key):
        with contextlib.suppress(InvalidKeyError):
            sqlite_store.authenticate(token)
    assert sqlite_store.verifier.remembered == 1
    secret = issued.key[23:-6]
    held = [text for text in _strings_reachable_from(sqlite_store) if secret in text]
    assert held == []


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
    sqlite_store: SQLAlchemyKeyStore, checkpw: CountingCheckpw, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from apikey_middleware._time import utcnow

    expires = utcnow() + timedelta(hours=1)
    issued = sqlite_store.create_key("n", expires_at=expires)
    assert sqlite_store.authenticate(issued.key).key_id == issued.id
    monkeypatch.setattr(verifier, "utcnow", lambda: expires)
    with pytest.raises(InvalidKeyError):
        sqlite_store.authenticate(issued.key)
    assert checkpw.calls == 1


def test_new_wrong_secrets_for_a_real_id_run_no_bcrypt_from_the_first_request(
    store: SQLAlchemyKeyStore,
    checkpw: CountingCheckpw,
    store_factory: StoreFactory,
) -> None:
    issued = store.create_key("n", key_type="live")
    # A process that has never seen the key: nothing remembered.
    fresh = store_factory(store.engine, schema=False)
    for _ in range(200):
        with pytest.raises(InvalidKeyError):
            fresh.authenticate(generate_key("live", issued.id).key)
    assert checkpw.calls == 0
    assert fresh.authenticate(issued.key).key_id == issued.id
    assert checkpw.calls == 1


def test_check_value_is_short_keyed_by_the_pepper_and_not_the_key(
    sqlite_url: str, store_factory: StoreFactory
) -> None:
    peppered = store_factory(sqlite_url, pepper=b"one")
    issued = peppered.create_key("n")
    with peppered.engine.connect() as connection:
        stored = connection.execute(sa.select(ApiKey.key_check)).scalar_one()
    assert stored == peppered.hasher.check_value(issued.key)
    assert len(stored) == 12
    assert int(stored, 16) >= 0
    assert stored not in issued.key
    other = store_factory(sqlite_url, pepper=b"two", schema=False)
    assert other.hasher.check_value(issued.key) != stored
    with pytest.raises(InvalidKeyError):
        other.authenticate(issued.key)


def test_a_row_without_check_value_costs_at_most_its_budget_of_bcrypt(
    sqlite_store: SQLAlchemyKeyStore, checkpw: CountingCheckpw, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verifier, "LEGACY_WINDOW", 0.5)
    issued = sqlite_store.create_key("old")
    clear_check(sqlite_store, issued.id)
    for _ in range(50):
        with pytest.raises(InvalidKeyError):
            sqlite_store.authenticate(generate_key("test", issued.id).key)
    assert checkpw.calls == verifier.LEGACY_BUDGET
    # While the budget is spent even the right key is refused unchecked...
    with pytest.raises(InvalidKeyError):
        sqlite_store.authenticate(issued.key)
    assert checkpw.calls == verifier.LEGACY_BUDGET
    time.sleep(0.6)
    # ...and once the window is over it is checked, and gets its check value.
    assert sqlite_store.authenticate(issued.key).key_id == issued.id
    for _ in range(50):
        with pytest.raises(InvalidKeyError):
            sqlite_store.authenticate(generate_key("test", issued.id).key)
    assert checkpw.calls == verifier.LEGACY_BUDGET + 1


def test_concurrent_wrong_secrets_for_a_row_without_check_value_share_one_budget(
    sqlite_store: SQLAlchemyKeyStore, checkpw: CountingCheckpw
) -> None:
    issued = sqlite_store.create_key("old")
    clear_check(sqlite_store, issued.id)
    start = threading.Barrier(20, timeout=10)

    def guess() -> None:
        token = generate_key("test", issued.id).key
        start.wait()
        with contextlib.suppress(InvalidKeyError):
            sqlite_store.authenticate(token)

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert checkpw.calls == verifier.LEGACY_BUDGET
