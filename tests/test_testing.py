"""apikey_middleware.testing, and the in-memory SQLite database it stands on."""

from __future__ import annotations

import logging
import threading

import pytest
from werkzeug.test import Client

from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore
from apikey_middleware.testing import TEST_BCRYPT_ROUNDS, memory_store

from .conftest import RecordingApp, bearer, make_app, wait_until


def test_an_in_memory_store_logs_usage_from_the_writer_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "apikey_middleware")
    store = SQLAlchemyKeyStore("sqlite://", bcrypt_rounds=TEST_BCRYPT_ROUNDS)
    store.create_schema()
    issued = store.create_key("n")
    guarded = ApiKeyMiddleware(RecordingApp(), store)
    client = Client(guarded)
    for _ in range(3):
        assert client.get("/", headers=bearer(issued.key)).status_code == 200
    writer = guarded.usage
    assert writer is not None
    # Written by the writer's own thread, within its interval (flush() would
    # write from this one).
    wait_until(lambda: writer.written == 3)
    assert sum(row.requests for row in store.usage(issued.id)) == 3
    assert store.get_key(issued.id).last_used_at is not None  # type: ignore[union-attr]
    guarded.close()
    store.close()
    assert caplog.records == []


def test_threads_share_the_one_in_memory_database() -> None:
    store = memory_store()
    issued = store.create_key("n")
    seen: list[str] = []

    def other_thread() -> None:
        seen.append(store.authenticate(issued.key).key_id)
        seen.append(store.create_key("from a thread").id)

    threads = [threading.Thread(target=other_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen.count(issued.id) == 4
    assert len(store.list_keys()) == 5
    store.close()


def test_memory_store_is_ready_and_cheap() -> None:
    store = memory_store()
    assert store.hasher.rounds == TEST_BCRYPT_ROUNDS
    assert store.check_setup() is True
    assert memory_store().list_keys() == []  # each is a database of its own
    store.close()


def test_the_fixture_gives_each_test_a_fresh_store(apikey_store: SQLAlchemyKeyStore) -> None:
    assert apikey_store.list_keys() == []
    issued = apikey_store.create_key("n", scopes=["clients:read"])
    client = make_app(apikey_store).test_client()
    assert client.get("/read", headers=bearer(issued.key)).json == {"key_id": issued.id}
