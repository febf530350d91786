"""What the middleware asks of a key store: the interface another store implements.

:class:`~apikey_middleware.store.SQLAlchemyKeyStore` is one such backend. To
put another store behind :class:`~apikey_middleware.middleware.ApiKeyMiddleware`
(keys from a secrets manager, a remote service, a fixed set for tests),
give it an ``authenticate`` with this contract, and, to keep the usage log
on, a ``record_usage`` (see :class:`~apikey_middleware.usage_records.UsageSink`).
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from .principal import Principal


@t.runtime_checkable
class KeyBackend(t.Protocol):
    """Resolves a presented key into who is calling and what it may do."""

    def authenticate(self, key: str) -> Principal:
        """Return the :class:`~apikey_middleware.principal.Principal` of
        ``key``, the token exactly as presented (it may be anything).

        :raises ~apikey_middleware.errors.InvalidKeyError: the key is not a
            valid one (a :class:`~apikey_middleware.errors.RejectedKeyError`
            with its id, for a known id, to have the attempt logged).
        :raises ~apikey_middleware.errors.StoreUnavailableError: the backend
            cannot tell now; the request is refused with 503, never let in.
        """
        ...
