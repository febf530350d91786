"""Key minting bounded per account across processes: the dashboard on
gunicorn workers that count in one Redis."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest
import requests
import sqlalchemy as sa

from apikey_middleware import SQLAlchemyKeyStore
from apikey_middleware.schema import metadata

from .conftest import TEST_ROUNDS, server_url
from .servers import gunicorn

pytestmark = pytest.mark.slow

TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def database() -> Iterator[str]:
    url = server_url("postgresql")
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    yield url
    metadata.drop_all(engine)
    engine.dispose()


def test_an_account_makes_at_most_its_rate_of_keys_across_workers(
    database: str, redis_prefix: str
) -> None:
    store = SQLAlchemyKeyStore(database, bcrypt_rounds=TEST_ROUNDS)
    store.create_schema()
    env = {
        "APIKEY_DATABASE_URL": database,
        "APIKEY_RATE_LIMIT_STORAGE": server_url("redis"),
        "APIKEY_RATE_LIMIT_PREFIX": redis_prefix,
        # Keys that take a while to make, as in production: the posts overlap.
        "APIKEY_BCRYPT_ROUNDS": "11",
    }
    with gunicorn("tests.dashboard_app:create_app()", env, workers=2) as server:
        base = f"{server.base}/settings/api-keys"
        signed_in = requests.Session()
        signed_in.get(f"{server.base}/as/mallory", timeout=30)
        match = TOKEN_RE.search(signed_in.get(f"{base}/new", timeout=30).text)
        assert match
        form = {"csrf_token": match.group(1), "name": "k", "key_type": "test"}
        form["scopes"] = "clients:read"
        statuses: list[int] = []
        start = threading.Barrier(8, timeout=30)

        def post() -> None:
            # A connection each, so that the posts spread over the workers.
            with requests.Session() as browser:
                browser.cookies.update(signed_in.cookies)
                start.wait()
                statuses.append(browser.post(f"{base}/new", data=form, timeout=30).status_code)

        threads = [threading.Thread(target=post) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        workers = {pid for pid, status, path in server.log if path.endswith("/new")}
        # Another account is not held back by mallory's rate.
        other = requests.Session()
        other.get(f"{server.base}/as/alice", timeout=30)
        token = TOKEN_RE.search(other.get(f"{base}/new", timeout=30).text)
        assert token
        made = other.post(f"{base}/new", data={**form, "csrf_token": token.group(1)}, timeout=30)
    # The default rate, 5 a minute, holds for both workers together.
    assert sorted(statuses) == [201] * 5 + [429] * 3
    assert len(workers) == 2
    assert len(store.list_keys(owner="mallory")) == 5
    assert made.status_code == 201
    store.close()
