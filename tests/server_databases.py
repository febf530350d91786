"""Fixtures of the server tests: the PostgreSQL test database and a store on
it, and a database server behind a fault proxy. Imported by the test modules
that use them, so that each keeps its own names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from apikey_middleware import SQLAlchemyKeyStore

from .conftest import StoreFactory, emptied, server_url
from .servers import TcpProxy


@pytest.fixture
def database() -> Iterator[str]:
    """The PostgreSQL test database, its key tables dropped before and after."""
    url = server_url("postgresql")
    with emptied(url):
        yield url


@pytest.fixture
def store(database: str, store_factory: StoreFactory) -> SQLAlchemyKeyStore:
    """A store on :func:`database`, its tables made."""
    return store_factory(database)


@pytest.fixture(params=["postgresql", "mysql"])
def proxied_server(request: pytest.FixtureRequest) -> Iterator[tuple[TcpProxy, str, str]]:
    """A database server reached through a fault proxy: proxy, proxied URL, direct URL."""
    direct = server_url(request.param)
    url = sa.make_url(direct)
    with emptied(url):
        proxy = TcpProxy(url.port or (5432 if request.param == "postgresql" else 3306))
        yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False), direct
        proxy.close()
