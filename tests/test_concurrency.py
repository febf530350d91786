"""Sixteen threads against one middleware: right answers, no cross-talk, exact counts."""

from __future__ import annotations

import json
import random
import threading
import time
import typing as t
from collections import Counter
from collections.abc import Iterable

import pytest
from werkzeug.test import Client

from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore
from apikey_middleware.buckets import BUCKETS
from apikey_middleware.keys import generate_key

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

pytestmark = pytest.mark.slow

THREADS = 16
SECONDS = 3.0


def echo(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"key_id": environ["apikey.principal"].key_id}).encode()]


def test_sixteen_threads_get_the_right_answer_every_time(store: SQLAlchemyKeyStore) -> None:
    reader = store.create_key("reader", scopes=["clients:read"])
    admin = store.create_key("admin", scopes=["clients:*"])
    revoked = store.create_key("revoked", scopes=["clients:*"])
    store.revoke(revoked.id)
    middleware = ApiKeyMiddleware(
        echo, store, rules=[("GET", "/r", "clients:read"), ("POST", "/w", "clients:write")]
    )
    wrong_secret = generate_key("test", reader.id).key
    # (method, path, key, expected status, expected key id in the body, logged key id)
    cases = [
        ("GET", "/r", reader.key, 200, reader.id, reader.id),
        ("GET", "/r", admin.key, 200, admin.id, admin.id),
        ("POST", "/w", admin.key, 200, admin.id, admin.id),
        ("POST", "/w", reader.key, 403, None, reader.id),
        ("GET", "/r", revoked.key, 401, None, revoked.id),
        ("GET", "/r", wrong_secret, 401, None, reader.id),
        ("GET", "/r", reader.key[:-1], 401, None, None),
        ("GET", "/r", generate_key("live").key, 401, None, None),
        ("GET", "/r", None, 401, None, None),
    ]
    sent: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    def worker(seed: int) -> None:
        client = Client(middleware)
        chooser = random.Random(seed)
        mine: Counter[str] = Counter()
        while time.monotonic() < deadline:
            method, path, key, status, body_id, logged = chooser.choice(cases)
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            response = client.open(path, method=method, headers=headers)
            if response.status_code != status:
                failures.append(f"{method} {path}: {response.status_code} != {status}")
            elif body_id is not None and response.json != {"key_id": body_id}:
                failures.append(f"cross-talk: {response.json} for {body_id}")
            mine["requests"] += 1
            if logged is not None:
                mine[logged] += 1
        with lock:
            sent.update(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    middleware.close()
    assert failures == []
    assert sent["requests"] > THREADS * 10
    assert middleware.usage is not None
    assert middleware.usage.dropped == 0
    for issued in (reader, admin, revoked):
        logged = sum(row.requests for row in store.usage(issued.id))
        assert logged == sent[issued.id], issued.record.name
        # The roll-ups summaries read agree with the rows, at every size.
        for bucket in BUCKETS:
            summed = sum(
                item.requests for item in store.usage_summary(key_id=issued.id, bucket=bucket)
            )
            assert summed == logged, bucket
    print(f"\nconcurrency: {THREADS} threads, {sent['requests']} requests in {SECONDS} s")
