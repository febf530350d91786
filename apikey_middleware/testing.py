"""Helpers for the test suites of apps that use API keys.

:func:`memory_store` is a ready key store in an in-memory SQLite database
(one connection that every thread shares, so the usage log works too) with
bcrypt at its lowest cost: a key costs milliseconds, not a quarter second.
With pytest, the ``apikey_store`` fixture gives each test a fresh one and
closes it afterwards; enable it in your ``conftest.py``:

.. code-block:: python

    pytest_plugins = ["apikey_middleware.testing"]

Never use these stores in production: their keys are hashed cheaply and
vanish with the process.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator

from .store import SQLAlchemyKeyStore

__all__ = ["TEST_BCRYPT_ROUNDS", "apikey_store", "memory_store"]

#: bcrypt's lowest cost, used by the test stores.
TEST_BCRYPT_ROUNDS = 4


def memory_store(**options: t.Any) -> SQLAlchemyKeyStore:
    """A key store in a new in-memory SQLite database, its tables made.

    :param options: more :class:`~apikey_middleware.store.SQLAlchemyKeyStore`
        options (``bcrypt_rounds`` is 4 unless given). Close the store at
        the end of the test (the fixture does).
    """
    options.setdefault("bcrypt_rounds", TEST_BCRYPT_ROUNDS)
    store = SQLAlchemyKeyStore("sqlite://", **options)
    store.create_schema()
    return store


try:
    import pytest
except ImportError:  # pragma: no cover - the store works without pytest
    pass
else:

    @pytest.fixture
    def apikey_store() -> Iterator[SQLAlchemyKeyStore]:
        """A fresh :func:`memory_store` for each test, closed after it."""
        store = memory_store()
        try:
            yield store
        finally:
            store.close()
