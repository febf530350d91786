"""What the usage log keeps of a request: the records a batch is made of,
where they go, and a path as it is stored.

Shared by the writer (:mod:`~apikey_middleware.usage`), which makes the
records, and the usage SQL (:mod:`~apikey_middleware.usage_log`), which
writes them.
"""

from __future__ import annotations

import typing as t
import urllib.parse
from datetime import datetime

from .keys import redact_keys
from .schema import MAX_PATH_LENGTH

if t.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class UsageRecord(t.NamedTuple):
    """Logged requests of a key: one, or ``requests`` identical ones (same
    method, path, status and address) in the minute of ``occurred_at``,
    the first of them.

    A named tuple in the column order of the usage table, so that a batch
    of them goes to the database as it is.
    """

    key_id: str
    occurred_at: datetime
    method: str
    path: str
    status: int
    remote_addr: str | None
    requests: int = 1


class UsageSink(t.Protocol):
    """Where a :class:`~apikey_middleware.usage.UsageWriter` writes: a key
    store, or anything with the same ``record_usage``. ``batch_id`` names
    the batch: a batch given again with an id already written must not be
    counted again."""

    def record_usage(
        self,
        records: Sequence[UsageRecord],
        *,
        last_used: Mapping[str, datetime] | None = None,
        batch_id: str | None = None,
    ) -> None: ...


# What stays as it is in a stored path: RFC 3986's path characters.
_PATH_SAFE = "/!$&'()*+,;=:@~"


def stored_path(raw: str) -> str:
    """A raw ``PATH_INFO`` as the usage log keeps it: percent-encoded to
    ASCII (no control character, no character a database may refuse) and
    with anything shaped like a key masked, cut to the column's size."""
    try:
        octets = raw.encode("latin-1")
    except UnicodeEncodeError:  # not a WSGI string: given directly
        octets = raw.encode("utf-8", "surrogatepass")
    return redact_keys(urllib.parse.quote(octets, safe=_PATH_SAFE))[:MAX_PATH_LENGTH]
