"""The legacy example with a store whose ``timeout`` the test chooses.

``APIKEY_TEST_TIMEOUT`` (seconds, default 2) bounds every wait of the
store; ``/health`` is public, every other path needs a key.
"""

from __future__ import annotations

import os
import typing as t

from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore
from examples.legacy_app import clients_app

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


def create_app() -> WSGIApplication:
    timeout = float(os.environ.get("APIKEY_TEST_TIMEOUT", "2"))
    store = SQLAlchemyKeyStore(os.environ["APIKEY_DATABASE_URL"], timeout=timeout)
    return ApiKeyMiddleware(clients_app, store, public=["/health"], log_usage=False)
