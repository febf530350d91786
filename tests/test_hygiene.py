"""No key, nor the secret part of one, ever leaves the moment it is issued."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from werkzeug.test import Client

from apikey_middleware import (
    ApiKeyMiddleware,
    ForbiddenError,
    InvalidKeyError,
    IssuedKey,
    KeyNotFoundError,
    MissingKeyError,
    ServiceUnavailableError,
    SQLAlchemyKeyStore,
)
from apikey_middleware.cli import main
from apikey_middleware.keys import parse_key
from apikey_middleware.schema import metadata
from apikey_middleware.usage import UsageWriter

from .conftest import RecordingApp, bearer


def secrets_of(key: str) -> list[str]:
    """The whole key and its secret part (what follows the public id)."""
    return [key, key[23:], key[23:-6]]


def test_a_whole_lifecycle_leaks_no_key(
    store: SQLAlchemyKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)
    middleware = ApiKeyMiddleware(
        RecordingApp(), store, rules=[("POST", "/v1/clients", "clients:write")]
    )
    client = Client(middleware)

    def use(key: str, method: str = "GET") -> None:
        response = client.open("/v1/clients?api_key=" + key, method=method, headers=bearer(key))
        seen.append(response.get_data(as_text=True))
        seen.append(repr(sorted(response.headers.items())))

    first = store.create_key("first", scopes=["clients:read"])
    second = store.create_key("second", key_type="live", scopes=["clients:*"])
    issued = [first, second]
    use(first.key)
    use(first.key, "POST")  # forbidden
    use(first.key[:-1])  # malformed
    use(first.key[:-1] + ("A" if first.key[-1] != "A" else "B"))  # bad checksum
    rotated = store.rotate(second.id)
    issued.append(rotated)
    use(second.key)  # revoked by rotation
    use(rotated.key)
    store.revoke(first.id)
    use(first.key)
    middleware.flush()
    seen.extend(repr(row) for row in store.usage(first.id) + store.usage(rotated.id))
    for failing in (
        lambda: store.revoke(first.key),
        lambda: store.rotate(first.id),
        lambda: store.create_key("x", scopes=[first.key + " "]),
    ):
        with pytest.raises(Exception) as caught:  # noqa: PT011
            failing()
        seen.append(str(caught.value))
        seen.append(repr(caught.value))
    runner = CliRunner()
    url = store.engine.url.render_as_string(hide_password=False)
    for args in (["list", "--all"], ["list", "--json"], ["show", first.id], ["usage", first.id],
                 ["show", first.key], ["revoke", first.key, "--yes"]):  # fmt: skip
        seen.append(runner.invoke(main, ["--database-url", url, *args]).output)
    with store.engine.connect() as connection:
        for table in metadata.sorted_tables:
            seen.extend(repr(tuple(row)) for row in connection.execute(sa.select(table)))
    seen.append(caplog.text)
    seen.extend(repr(item) for item in _public_objects(store, middleware, issued))
    everything = "\n".join(seen)
    for key in issued:
        for secret in secrets_of(key.key):
            assert secret not in everything
    middleware.close()


def _public_objects(
    store: SQLAlchemyKeyStore, middleware: ApiKeyMiddleware, issued: list[IssuedKey]
) -> Iterable[object]:
    yield store
    yield middleware
    yield store.hasher
    yield UsageWriter(store)
    yield MissingKeyError()
    yield InvalidKeyError()
    yield ForbiddenError(["a"])
    yield ServiceUnavailableError()
    yield KeyNotFoundError(issued[0].key)
    for key in issued:
        yield key
        yield key.record
        parsed = parse_key(key.key)
        assert parsed is not None
        yield parsed
        yield store.authenticate(parsed) if key is issued[-1] else None
