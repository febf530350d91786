"""What one client can cost a server, on gunicorn: key minting bounded per
account across workers that count in one Redis, and method overrides
refused before any key is checked."""

from __future__ import annotations

import re
import threading

import pytest
import requests

from apikey_middleware import SQLAlchemyKeyStore

from . import server_databases
from .conftest import server_url, wait_until
from .servers import gunicorn, request

pytestmark = pytest.mark.slow

# The shared PostgreSQL fixtures, under the names the tests here use.
database = server_databases.database
store = server_databases.store

TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def test_an_account_makes_at_most_its_rate_of_keys_across_workers(
    store: SQLAlchemyKeyStore, database: str, redis_prefix: str
) -> None:
    env = {
        "APIKEY_DATABASE_URL": database,
        "APIKEY_RATE_LIMIT_STORAGE": server_url("redis"),
        "APIKEY_RATE_LIMIT_PREFIX": redis_prefix,
        # Keys that take a while to make, as in production: the posts overlap.
        "APIKEY_BCRYPT_ROUNDS": "11",
    }
    with gunicorn("tests.dashboard_app:create_app()", env, workers=2) as server:
        base = f"{server.base}/settings/api-keys"

        def burst(account: str) -> tuple[list[int], set[int]]:
            """Eight concurrent posts of ``account``: their answers, and the
            workers that answered them."""
            signed_in = requests.Session()
            signed_in.get(f"{server.base}/as/{account}", timeout=30)
            match = TOKEN_RE.search(signed_in.get(f"{base}/new", timeout=30).text)
            assert match
            form = {"csrf_token": match.group(1), "name": "k", "key_type": "test"}
            form["scopes"] = "clients:read"
            statuses: list[int] = []
            start = threading.Barrier(8, timeout=30)
            logged = len(server.log)

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
            wait_until(lambda: len(server.log) >= logged + 8)
            posts = [pid for pid, _, path in server.log[logged:] if path.endswith("/new")]
            return statuses, set(posts)

        # A worker still starting may take no post: another account, another
        # burst, until one burst is answered by both workers.
        for attempt in range(5):
            account = f"mallory-{attempt}"
            statuses, workers = burst(account)
            # The default rate, 5 a minute, holds for both workers together.
            assert sorted(statuses) == [201] * 5 + [429] * 3
            assert len(store.list_keys(owner=account)) == 5
            if len(workers) == 2:
                break
        # Another account is not held back by mallory's rate.
        other = requests.Session()
        other.get(f"{server.base}/as/alice", timeout=30)
        token = TOKEN_RE.search(other.get(f"{base}/new", timeout=30).text)
        assert token
        form = {"csrf_token": token.group(1), "name": "k", "key_type": "test"}
        made = other.post(f"{base}/new", data={**form, "scopes": "clients:read"}, timeout=30)
    assert len(workers) == 2
    assert made.status_code == 201


def test_method_overrides_past_one_get_400_on_gunicorn(
    store: SQLAlchemyKeyStore, database: str, redis_prefix: str
) -> None:
    issued = store.create_key("reader")
    env = {
        "APIKEY_DATABASE_URL": database,
        "APIKEY_RATE_LIMIT_STORAGE": "memory://",
        "APIKEY_RATE_LIMIT_PREFIX": redis_prefix,
    }
    many = "&".join(f"_method=Q{n}" for n in range(150))
    bad_request = {
        "success": False,
        "error": {"code": "BAD_REQUEST", "message": "The request path or method is not valid"},
    }
    with gunicorn("tests.ratelimit_app:create_app()", env, workers=2) as server:
        auth = {"Authorization": f"Bearer {issued.key}"}
        for query, headers in ((many, {}), (many, auth), ("_method=PROPFIND", auth)):
            status, _, body = request(f"{server.base}/v1/clients?{query}", headers)
            assert (status, body) == (400, bad_request)
        assert request(f"{server.base}/v1/clients?_method=delete", auth)[0] == 200
        assert request(f"{server.base}/v1/clients?{many}")[0] == 400
