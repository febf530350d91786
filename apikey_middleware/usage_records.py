"""What the usage log keeps of a request: the rows the writer buffers, the
records and batches they become, where those go, and a path as it is stored.

Shared by the writer (:mod:`~apikey_middleware.usage`), which makes the
records, and the usage SQL (:mod:`~apikey_middleware.usage_log`), which
writes them.
"""

from __future__ import annotations

import secrets
import sys
import typing as t
import urllib.parse
from datetime import UTC, datetime

from ._lru import LRUCache
from .keys import redact_secrets
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


# A buffered row: key id, minute (of the epoch), method, raw path, status and
# address. Its count is a list: [first, requests, last_accepted], times as
# time.time() gives them; last_accepted stays 0.0 until a request of the
# row had its key accepted (only those move last_used_at).
Group = tuple[str, int, str, str, int, str | None]

# What a buffered row costs beyond its strings: its dictionary entry, the
# tuple, the count's list and numbers (CPython, 64-bit, roughly).
_ROW_OVERHEAD = 400


def size_of(method: str, path: str, remote_addr: str | None) -> int:
    """Roughly the memory a buffered row takes, whatever characters its
    strings hold."""
    size = _ROW_OVERHEAD + sys.getsizeof(method) + sys.getsizeof(path)
    return size if remote_addr is None else size + sys.getsizeof(remote_addr)


#: Status lines logged, with their codes: an app has a handful. Short ones
#: only, so that what the cache holds stays small.
_STATUS_CODES: dict[str, int] = {}
_MOST_STATUS_LINES = 512
_LONGEST_CACHED_LINE = 64


def status_code(status: object) -> int:
    """The code of a status line; 0 for one that has no three-digit code,
    or that is not a string (the server refuses it, not the log)."""
    if type(status) is not str:
        # A subclass may hash or compare as it likes: its plain text is read.
        return status_code(str.__str__(status)) if isinstance(status, str) else 0
    code = _STATUS_CODES.get(status)
    if code is None:
        digits = status[:3]
        code = int(digits) if digits.isascii() and digits.isdigit() else 0
        if not (100 <= code <= 999 and status[3:4] in ("", " ")):
            code = 0
        if len(status) <= _LONGEST_CACHED_LINE and len(_STATUS_CODES) < _MOST_STATUS_LINES:
            _STATUS_CODES[status] = code
    return code


class Batch(t.NamedTuple):
    """Buffered rows made into records, ready to write (and to write again,
    the same, after a failure)."""

    id: str
    records: list[UsageRecord]
    last_used: dict[str, datetime]
    requests: int  # that its records stand for
    size: int  # their bytes in the buffer's count

    def halves(self) -> tuple[Batch, Batch]:
        """The batch cut in two, each with an id of its own."""
        middle = len(self.records) // 2
        parts = self.records[:middle], self.records[middle:]
        counts = [sum(record.requests for record in part) for part in parts]
        first_size = self.size * counts[0] // self.requests
        return (
            Batch(secrets.token_hex(16), parts[0], self.last_used, counts[0], first_size),
            Batch(
                secrets.token_hex(16), parts[1], self.last_used, counts[1], self.size - first_size
            ),
        )


def batches_of(groups: dict[Group, list[float]], batch_size: int) -> list[Batch]:
    """Buffered rows as batches of ``batch_size`` records at most."""
    batches: list[Batch] = []
    items = list(groups.items())
    for start in range(0, len(items), batch_size):
        records: list[UsageRecord] = []
        latest: dict[str, float] = {}
        size = requests = 0
        for (key_id, _, method, path, status, addr), (first, count, accepted) in items[
            start : start + batch_size
        ]:
            size += size_of(method, path, addr)
            requests += int(count)
            first_at = datetime.fromtimestamp(first, UTC)
            method, path = stored_text(method), stored_path(path)
            addr = None if addr is None else stored_text(addr)
            records.append(UsageRecord(key_id, first_at, method, path, status, addr, int(count)))
            if accepted and latest.get(key_id, 0.0) < accepted:
                latest[key_id] = accepted
        last_used = {key: datetime.fromtimestamp(at, UTC) for key, at in latest.items()}
        batches.append(Batch(secrets.token_hex(16), records, last_used, requests, size))
    return batches


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
    return redact_secrets(urllib.parse.quote(octets, safe=_PATH_SAFE))[:MAX_PATH_LENGTH]


def stored_text(raw: str) -> str:
    """A method or an address as the usage log keeps it: printable ASCII as
    it is, anything else percent-encoded as a path is (a surrogate or a
    control character must not reach the database); a key masked in
    either."""
    if raw.isascii() and raw.isprintable():
        # An address comes from a header where a proxy is trusted: anything.
        return redact_secrets(raw)
    return stored_path(raw)


class RefusedTargets:
    """Key ids are public: anyone may send refused requests for one, to as
    many paths, from as many addresses, as they like. Past ``most`` methods
    and paths, or addresses, in a minute, a key's refused requests are
    logged with ``*`` for them, still counted exactly by status, so that
    they cannot flood its log with rows. Not thread-safe: the writer calls
    it under its lock."""

    def __init__(self, most: int, keys: int = 4096) -> None:
        self.most = most
        # Per key id: the minute, and the hashes of the targets and of the
        # addresses seen in it (this memory is outside the buffer's bounds).
        self._seen: LRUCache[str, tuple[int, set[int], set[int]]] = LRUCache(keys)

    def target(
        self, key_id: str, minute: int, method: str, path: str, address: str | None
    ) -> tuple[str, str, str | None]:
        """The method, path and address a refused request is logged with."""
        seen = self._seen.get(key_id)
        if seen is None or seen[0] != minute:
            seen = (minute, set(), set())
            self._seen.set(key_id, seen)
        _, targets, addresses = seen
        target = hash((method, path))
        if target not in targets:
            if len(targets) >= self.most:
                method, path = "*", "*"
            else:
                targets.add(target)
        source = hash(address)
        if source not in addresses:
            if len(addresses) >= self.most:
                address = "*"
            else:
                addresses.add(source)
        return method, path, address
