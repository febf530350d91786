"""Revocation, rotation and expiry across processes, under gunicorn.

The Flask example runs under gunicorn with two workers. A key is used until
both workers have verified it (and so remember it); then the ``apikey``
command, a third process, changes it. From the moment the command returns,
every worker must answer the new truth.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import emptied, server_url
from .servers import Gunicorn, apikey, gunicorn, request

pytestmark = pytest.mark.slow

APP = "examples.flask_app:create_app()"
WORKERS = 2


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    url = server_url("postgresql")
    with emptied(url):
        yield url


def new_key(output: str) -> tuple[str, str]:
    (key,) = re.findall(r"^\s+(sk_(?:test|live)_[A-Za-z0-9_]+)$", output, re.MULTILINE)
    return key, key[8:22]


def call(server: Gunicorn, key: str) -> int:
    return request(f"{server.base}/v1/clients", {"Authorization": f"Bearer {key}"})[0]


def statuses_by_worker(server: Gunicorn, since: int, count: int) -> dict[int, set[int]]:
    """The statuses each worker gave in access-log lines ``since`` onwards."""
    deadline = time.monotonic() + 5
    while len(server.log) < since + count and time.monotonic() < deadline:
        time.sleep(0.02)
    seen: dict[int, set[int]] = {}
    for pid, status, _ in server.log[since:]:
        seen.setdefault(pid, set()).add(status)
    return seen


def until_every_worker(server: Gunicorn, key: str, expected: int, limit: int = 400) -> int:
    """Send requests until every worker has answered; all must be ``expected``.

    Returns how many were sent.
    """
    start = len(server.log)
    for sent in range(1, limit + 1):
        assert call(server, key) == expected
        if len(statuses_by_worker(server, start, sent)) == WORKERS:
            seen = statuses_by_worker(server, start, sent)
            assert all(statuses == {expected} for statuses in seen.values()), seen
            return sent
    raise AssertionError(f"{WORKERS} workers did not all answer in {limit} requests")


def expires_at(database: str, key_id: str) -> datetime:
    shown = json.loads(apikey(database, "show", key_id, "--json"))
    return datetime.fromisoformat(shown["expires_at"])


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(moment.tzinfo)).total_seconds()) + 0.05)


@pytest.mark.parametrize("revocation", ["immediate", "channel"])
def test_revoked_key_is_rejected_by_every_worker_once_the_command_returns(
    database: str, revocation: str
) -> None:
    apikey(database, "init-db")
    key, key_id = new_key(apikey(database, "create", "--name", "shared", "--scope", "clients:read"))
    env = {"APIKEY_DATABASE_URL": database, "APIKEY_REVOCATION": revocation}
    with gunicorn(APP, env, workers=WORKERS) as server:
        until_every_worker(server, key, 200)
        until_every_worker(server, key, 200)  # channel mode: served from memory now
        assert len(server.worker_pids()) == WORKERS
        apikey(database, "revoke", key_id, "--yes")
        if revocation == "channel" and database.startswith("postgresql"):
            # Heard when the notification arrives: milliseconds, not zero.
            time.sleep(0.5)
        until_every_worker(server, key, 401)
        for _ in range(10):
            assert call(server, key) == 401


def test_rotated_key_works_in_every_worker_until_the_grace_ends(database: str) -> None:
    apikey(database, "init-db")
    old, old_id = new_key(apikey(database, "create", "--name", "rot", "--scope", "clients:read"))
    with gunicorn(APP, {"APIKEY_DATABASE_URL": database}, workers=WORKERS) as server:
        until_every_worker(server, old, 200)
        new, _ = new_key(apikey(database, "rotate", old_id, "--grace", "5s"))
        end = expires_at(database, old_id)
        until_every_worker(server, new, 200)
        until_every_worker(server, old, 200)
        assert datetime.now(end.tzinfo) < end, "the grace ended before both keys were checked"
        sleep_until(end)
        until_every_worker(server, old, 401)
        until_every_worker(server, new, 200)


def test_expired_key_is_rejected_by_every_worker(database: str) -> None:
    apikey(database, "init-db")
    with gunicorn(APP, {"APIKEY_DATABASE_URL": database}, workers=WORKERS) as server:
        # Made once the workers are up, so that a slow start cannot use up its life.
        key, key_id = new_key(
            apikey(
                database,
                "create",
                "--name",
                "brief",
                "--scope",
                "clients:read",
                "--expires-in",
                "8s",
            )
        )
        end = expires_at(database, key_id)
        until_every_worker(server, key, 200)
        assert datetime.now(end.tzinfo) < end, "the key expired before both workers checked it"
        sleep_until(end)
        until_every_worker(server, key, 401)
