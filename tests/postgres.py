"""Fixtures of the server tests that share one PostgreSQL database: imported
by the test modules that use them, so that each keeps its own names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from apikey_middleware import SQLAlchemyKeyStore
from apikey_middleware.schema import metadata

from .conftest import TEST_ROUNDS, server_url


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
