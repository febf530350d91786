"""Limits that hold across hosts: two gunicorn servers, two workers each, one
PostgreSQL and one Redis.

Two servers on two ports stand for two hosts: four worker processes that
share nothing but the database and Redis. A key's limit and an address's
failed attempts must hold for all four together, not for each.
"""

from __future__ import annotations

import shutil
import threading
import time
import typing as t
import uuid
from contextlib import ExitStack

import pytest

from apikey_middleware import SQLAlchemyKeyStore
from apikey_middleware.keys import generate_key

from . import server_databases
from .conftest import server_url
from .servers import Gunicorn, gunicorn, redis_server, request

pytestmark = pytest.mark.slow

# The shared PostgreSQL fixtures, under the names the tests here use.
database = server_databases.database
store = server_databases.store

APP = "tests.ratelimit_app:create_app()"
WORKERS = 2


def two_hosts(stack: ExitStack, env: dict[str, str]) -> list[Gunicorn]:
    return [stack.enter_context(gunicorn(APP, env, workers=WORKERS)) for _ in range(2)]


Answer = tuple[int, dict[str, str], t.Any]


def burst(
    servers: list[Gunicorn], key: str, count: int, path: str = "/v1/work?sleep=0.3"
) -> list[Answer]:
    """``count`` requests at once, spread over the servers."""
    answers: list[Answer] = []
    lock = threading.Lock()
    start = threading.Barrier(count, timeout=30)

    def send(number: int) -> None:
        server = servers[number % len(servers)]
        start.wait()
        answer = request(f"{server.base}{path}", {"Authorization": f"Bearer {key}"})
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=send, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def workers_that_answered(servers: list[Gunicorn], count: int) -> set[int]:
    deadline = time.monotonic() + 5
    while sum(len(server.log) for server in servers) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return {pid for server in servers for pid, _, _ in server.log}


def test_a_key_gets_exactly_its_limit_across_four_workers_on_two_hosts(
    store: SQLAlchemyKeyStore, database: str, redis_prefix: str
) -> None:
    issued = store.create_key("shared", rate_limit="10/minute")
    env = {
        "APIKEY_DATABASE_URL": database,
        "APIKEY_RATE_LIMIT_STORAGE": server_url("redis"),
        "APIKEY_RATE_LIMIT_PREFIX": redis_prefix,
    }
    with ExitStack() as stack:
        servers = two_hosts(stack, env)
        answers = burst(servers, issued.key, 16)
        assert len(workers_that_answered(servers, 16)) == 2 * WORKERS
    served = [headers for status, headers, _ in answers if status == 200]
    refused = [(headers, body) for status, headers, body in answers if status == 429]
    assert len(served) == 10
    assert len(refused) == 6
    # One count: each of the ten saw a different number left.
    assert sorted(int(headers["X-RateLimit-Remaining"]) for headers in served) == list(range(10))
    for headers, body in refused:
        assert body == {
            "success": False,
            "error": {"code": "RATE_LIMITED", "message": "Rate limit exceeded for this API key"},
        }
        assert headers["X-RateLimit-Limit"] == "10"
        assert headers["X-RateLimit-Remaining"] == "0"
        assert 0 < int(headers["Retry-After"]) <= 60
        assert abs(int(headers["X-RateLimit-Reset"]) - time.time() - 60) < 10


def test_failed_attempts_stop_an_address_at_the_limit_across_four_workers(
    store: SQLAlchemyKeyStore, database: str, redis_prefix: str
) -> None:
    issued = store.create_key("target")
    wrong = generate_key("test", issued.id).key
    env = {
        "APIKEY_DATABASE_URL": database,
        "APIKEY_RATE_LIMIT_STORAGE": server_url("redis"),
        "APIKEY_RATE_LIMIT_PREFIX": redis_prefix,
        "APIKEY_THROTTLE_LIMIT": "5",
    }
    statuses: list[int] = []
    with ExitStack() as stack:
        servers = two_hosts(stack, env)
        for _ in range(25):  # until all four workers have judged some (a busy machine: more)
            statuses += [status for status, _, _ in burst(servers, wrong, 12, "/v1/work")]
            if len(workers_that_answered(servers, len(statuses))) == 2 * WORKERS:
                break
        assert len(workers_that_answered(servers, len(statuses))) == 2 * WORKERS
        # The valid key of the same address is not shut out.
        assert request(f"{servers[1].base}/v1/work", {"Authorization": f"Bearer {issued.key}"})[
            0
        ] == (200)
    assert statuses.count(401) == 5
    assert statuses.count(429) == len(statuses) - 5


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server here")
def test_redis_stopped_mid_run_requests_go_on_then_counting_is_shared_again(
    store: SQLAlchemyKeyStore, database: str
) -> None:
    issued = store.create_key("busy", rate_limit="1000/minute")
    with redis_server() as redis, ExitStack() as stack:
        env = {
            "APIKEY_DATABASE_URL": database,
            "APIKEY_RATE_LIMIT_STORAGE": redis.url,
            "APIKEY_RATE_LIMIT_PREFIX": uuid.uuid4().hex,
            "APIKEY_TEST_RETRY_INTERVAL": "1",
        }
        servers = two_hosts(stack, env)
        assert {status for status, _, _ in burst(servers, issued.key, 8)} == {200}
        redis.stop()
        for _ in range(3):
            started = time.monotonic()
            answers = burst(servers, issued.key, 8)
            assert {status for status, _, _ in answers} == {200}  # no 500, no refusal
            assert time.monotonic() - started < 3  # 0.3 s of work, no hang
        redis.start()
        time.sleep(1.2)  # each worker tries Redis again within a second
        fresh = store.create_key("fresh", rate_limit="3/minute")
        answers = burst(servers, fresh.key, 8)
        assert sorted(status for status, _, _ in answers) == [200] * 3 + [429] * 5
    for server in servers:
        output: str = server.output  # type: ignore[attr-defined]
        assert "unavailable" in output
        assert "counting is shared again" in output
        assert "Traceback" not in output
