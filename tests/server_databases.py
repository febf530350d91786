"""Fixtures of the server tests: the PostgreSQL test database and a store on
it, and a database server behind a fault proxy. Imported by the test modules
that use them, so that each keeps its own names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from apikey_middleware import SQLAlchemyKeyStore
from apikey_middleware.schema import metadata

from .conftest import TEST_ROUNDS, server_url
from .servers import TcpProxy


@pytest.fixture
def database() -> Iterator[str]:
    """The PostgreSQL test database, its key tables dropped before and after."""
    url = server_url("postgresql")
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    yield url
    metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def store(database: str) -> Iterator[SQLAlchemyKeyStore]:
    """A store on :func:`database`, its tables made."""
    key_store = SQLAlchemyKeyStore(database, bcrypt_rounds=TEST_ROUNDS)
    key_store.create_schema()
    yield key_store
    key_store.close()


@pytest.fixture(params=["postgresql", "mysql"])
def proxied_server(request: pytest.FixtureRequest) -> Iterator[tuple[TcpProxy, str, str]]:
    """A database server reached through a fault proxy: proxy, proxied URL, direct URL."""
    direct = server_url(request.param)
    url = sa.make_url(direct)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    metadata.drop_all(engine)
    proxy = TcpProxy(url.port or (5432 if request.param == "postgresql" else 3306))
    yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False), direct
    proxy.close()
    metadata.drop_all(engine)
    engine.dispose()
