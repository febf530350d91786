"""Shared fixtures: one key store per database the machine offers.

SQLite always runs. PostgreSQL and MySQL/MariaDB run when
``APIKEY_TEST_POSTGRES_URL`` and ``APIKEY_TEST_MYSQL_URL`` name a database
(``.ci/run`` sets both); otherwise their tests are skipped, saying why.
"""

from __future__ import annotations

import os
import time
import typing as t
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from apikey_middleware import SQLAlchemyKeyStore
from apikey_middleware.schema import metadata

SERVER_URL_VARIABLES = {
    "postgresql": "APIKEY_TEST_POSTGRES_URL",
    "mysql": "APIKEY_TEST_MYSQL_URL",
}
TEST_ROUNDS = 4


def server_url(backend: str) -> str:
    """The URL of a database server for ``backend``, or skip the test."""
    variable = SERVER_URL_VARIABLES[backend]
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{variable} is not set: no {backend} server to test against")
    return url


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend; its tables are dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
        return
    url = server_url(request.param)
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    yield url
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def store(database_url: str) -> Iterator[SQLAlchemyKeyStore]:
    """A ready store on each backend, with cheap bcrypt."""
    key_store = SQLAlchemyKeyStore(database_url, bcrypt_rounds=TEST_ROUNDS)
    key_store.create_schema()
    yield key_store
    key_store.close()


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[SQLAlchemyKeyStore]:
    """A ready store on SQLite only, for tests about HTTP rather than storage."""
    key_store = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS)
    key_store.create_schema()
    yield key_store
    key_store.close()


class Statements:
    """The SQL statements a store's engine runs from now on."""

    def __init__(self, store: SQLAlchemyKeyStore) -> None:
        self.seen: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        self.seen.append(statement)

    @property
    def key_reads(self) -> int:
        """How many of them read the keys table."""
        return sum("FROM apikey_keys" in statement for statement in self.seen)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll ``condition`` until it holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.005)
    return time.monotonic() - started
