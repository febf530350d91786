"""Redis faults: a redis-server of the test's own is stopped, frozen or never there.

Requests must go on (authenticated as ever, never a 500, never waiting past
a short timeout), counted per process in memory while Redis is away, with
one log line per outage; once Redis answers again, counting is shared again.
"""

from __future__ import annotations

import logging
import shutil
import time
import typing as t
from collections.abc import Iterator

import pytest
import redis
from werkzeug.test import Client

from apikey_middleware import ApiKeyMiddleware, CounterStorage, FailureThrottle, SQLAlchemyKeyStore
from apikey_middleware.keys import generate_key

from .conftest import INVALID, RecordingApp, bearer
from .servers import RedisServer, free_port, redis_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server here"),
]

TIMEOUT = 0.25
RETRY = 0.5


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def storage(url: str) -> CounterStorage:
    return CounterStorage(url, prefix="faults", timeout=TIMEOUT, retry_interval=RETRY)


def process(store: SQLAlchemyKeyStore, counters: CounterStorage, **options: t.Any) -> Client:
    """A middleware as one worker process would have it."""
    return Client(
        ApiKeyMiddleware(
            RecordingApp(), store, rate_limit_storage=counters, log_usage=False, **options
        )
    )


def timed(client: Client, key: str) -> tuple[int, float]:
    started = time.monotonic()
    status = client.get("/", headers=bearer(key)).status_code
    return status, time.monotonic() - started


def outage_lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


def test_redis_stopped_mid_run_counts_in_memory_then_shares_again(
    server: RedisServer, sqlite_store: SQLAlchemyKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="apikey_middleware")
    first, second = storage(server.url), storage(server.url)
    clients = [process(sqlite_store, first), process(sqlite_store, second)]
    issued = sqlite_store.create_key("n", rate_limit="4/minute")
    remaining = [
        clients[n % 2].get("/", headers=bearer(issued.key)).headers["X-RateLimit-Remaining"]
        for n in range(3)
    ]
    assert remaining == ["3", "2", "1"]  # one count for both

    server.stop()
    statuses = []
    for n in range(20):
        status, took = timed(clients[n % 2], issued.key)
        statuses.append(status)
        assert took < 2 * TIMEOUT + 0.5
    # Each process counts on its own now: four each, from nothing.
    assert statuses.count(200) == 8
    assert statuses.count(429) == 12
    assert not first.available
    assert not second.available
    assert outage_lines(caplog, "unavailable") == 2  # one line per process and outage
    # Authentication never fails open meanwhile.
    wrong = generate_key("test", issued.id).key
    assert clients[0].get("/", headers=bearer(wrong)).json == INVALID
    assert clients[1].get("/").status_code == 401

    server.start()
    time.sleep(RETRY + 0.1)
    fresh = sqlite_store.create_key("fresh", rate_limit="3/minute")
    statuses = [clients[n % 2].get("/", headers=bearer(fresh.key)).status_code for n in range(6)]
    assert statuses == [200] * 3 + [429] * 3  # shared again
    assert first.available
    assert second.available
    assert outage_lines(caplog, "counting is shared again") == 2
    first.close()
    second.close()


def test_a_frozen_redis_costs_one_timeout_then_nothing(
    server: RedisServer, sqlite_store: SQLAlchemyKeyStore
) -> None:
    counters = storage(server.url)
    client = process(sqlite_store, counters)
    issued = sqlite_store.create_key("n", rate_limit="100/minute")
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    server.pause()
    try:
        status, took = timed(client, issued.key)
        assert status == 200
        assert TIMEOUT * 0.8 <= took < TIMEOUT + 0.5
        for _ in range(10):
            status, took = timed(client, issued.key)
            assert status == 200
            assert took < TIMEOUT  # counted in memory until the next try
    finally:
        server.resume()
    time.sleep(RETRY + 0.1)
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    assert counters.available
    counters.close()


def test_a_redis_never_there_does_not_stop_requests(
    sqlite_store: SQLAlchemyKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="apikey_middleware")
    counters = storage(f"redis://127.0.0.1:{free_port()}/0")
    client = process(sqlite_store, counters, throttle=FailureThrottle(2, 60))
    issued = sqlite_store.create_key("n", rate_limit="2/minute")
    started = time.monotonic()
    assert [client.get("/", headers=bearer(issued.key)).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    wrong = bearer(generate_key("test", issued.id).key)
    assert [client.get("/", headers=wrong).status_code for _ in range(3)] == [401, 401, 429]
    assert time.monotonic() - started < 3
    assert outage_lines(caplog, "unavailable") == 1
    assert "127.0.0.1" in caplog.text
    counters.close()


def test_a_script_redis_forgot_is_loaded_again(
    server: RedisServer, sqlite_store: SQLAlchemyKeyStore
) -> None:
    counters = storage(server.url)
    client = process(sqlite_store, counters)
    issued = sqlite_store.create_key("n", rate_limit="3/minute")
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    admin = redis.Redis.from_url(server.url)
    admin.script_flush()
    admin.close()
    response = client.get("/", headers=bearer(issued.key))
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "1"
    assert counters.available
    counters.close()
