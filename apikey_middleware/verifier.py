"""The request path: turn a presented key into a principal, as cheaply as is safe.

One :class:`Verifier` per store holds everything a request touches: the
primary-key read of the key's row (or, in channel mode, the row cached under
the channel's token), the memory of keys already verified and of wrong keys
already refused, and the bound on bcrypt checks at once. A request costs, in
order, what it must and no more:

1. a token this process has verified: one keyed digest, the row read (or
   taken from the cache) and compared with the one it was verified against;
2. anything else that cannot be a key (length, alphabet, prefix,
   checksum): refused before any database work;
3. an unknown id: one read;
4. a known id with a wrong secret: one read and one HMAC (the row's check
   value); bcrypt runs only for the right key. A row made before check
   values costs a bcrypt per wrong secret, but only :data:`LEGACY_BUDGET`
   per id per minute in each process; past that, new secrets for it are
   refused unchecked until the minute is over.

When the database stops answering (a read that failed after waiting half
the timeout or more), the verifier answers "unavailable" at once for the
next ``timeout`` seconds, letting one request at a time try the database:
a hung database costs each process one timeout, not one per request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
import typing as t
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Engine

from ._lru import LRUCache
from ._time import utcnow
from .changes import ChangeChannel, announce
from .errors import InvalidKeyError, RejectedKeyError, StoreUnavailableError
from .hashing import KeyHasher
from .keys import KEY_LENGTH, ParsedKey, parse_key
from .principal import Principal
from .schema import keys_table

logger = logging.getLogger("apikey_middleware")

#: How many verified keys (and failed ones, and rows) are remembered when
#: not told otherwise.
DEFAULT_CACHE_SIZE = 10_000


class AuthRow(t.NamedTuple):
    """What authentication reads of a key's row, in ``_AUTH_QUERY``'s order."""

    key_type: str
    key_hash: str
    key_check: str | None
    name: str
    scopes: str
    owner: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    rate_limit: str | None


# The one query on the request path: a primary-key read of what
# authentication needs, built once so SQLAlchemy compiles it once.
_AUTH_QUERY = sa.select(
    keys_table.c.key_type,
    keys_table.c.key_hash,
    keys_table.c.key_check,
    keys_table.c.name,
    keys_table.c.scopes,
    keys_table.c.owner,
    keys_table.c.expires_at,
    keys_table.c.revoked_at,
    keys_table.c.rate_limit,
).where(keys_table.c.id == sa.bindparam("key_id"))

# Gives a row made before check values existed its own, once.
_SET_CHECK_QUERY = (
    sa.update(keys_table)
    .where(
        keys_table.c.id == sa.bindparam("check_id"),
        keys_table.c.key_hash == sa.bindparam("check_hash"),
        keys_table.c.key_check.is_(None),
    )
    .values(key_check=sa.bindparam("check_value"))
)

#: Wrong secrets a row without a check value may cost in bcrypt, per
#: :data:`LEGACY_WINDOW` seconds, in each process.
LEGACY_BUDGET = 3
#: The window of :data:`LEGACY_BUDGET`, in seconds.
LEGACY_WINDOW = 60.0

#: Messages of a database that has no key table yet, by backend.
#: Seconds between reports of one outage: the first failure is logged at
#: once, later ones are counted into the next report.
OUTAGE_REPORT_INTERVAL = 60.0
_MISSING_TABLE = ("no such table", "does not exist", "doesn't exist")


def describe_fault(error: exc.SQLAlchemyError) -> str:
    """The driver's complaint in one line, for the log (never a key: the
    request path binds only key ids)."""
    cause = error.orig if isinstance(error, exc.DBAPIError) else error
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first}"[:300]


class Verifier:
    """Authenticates presented keys against the key rows of ``engine``.

    :param engine: where the key rows are.
    :param hasher: checks a key against its row's check value and hash.
    :param cache_size: verified keys remembered (by a keyed digest, never
        the key), as many refused wrong keys, and as many cached rows.
    :param timeout: seconds a bcrypt check may wait for a slot.
    :param bcrypt_concurrency: bcrypt checks that may run at once.
    :param channel: in channel mode, what says whether cached rows are
        still good; ``None`` reads the row on every request.
    :param on_verified: called after a key passes bcrypt (once per key and
        process): the store records there that its pepper is proven.
    :param on_check_failed: called when the secret of a known, usable key
        fails its check: the store looks there whether the database records
        another pepper.
    """

    def __init__(
        self,
        engine: Engine,
        hasher: KeyHasher,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        timeout: float = 5.0,
        bcrypt_concurrency: int = 1,
        channel: ChangeChannel | None = None,
        on_verified: t.Callable[[], None] | None = None,
        on_check_failed: t.Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self._on_verified = on_verified
        self._on_check_failed = on_check_failed
        self.hasher = hasher
        self.timeout = timeout
        self.channel = channel
        # Verified keys: a keyed digest of the key -> its id, the row it was
        # verified against and its principal. Never the key itself.
        self._verified: LRUCache[bytes, tuple[str, AuthRow, Principal]] = LRUCache(cache_size)
        # Keys that failed bcrypt, by the same digest -> the hash they failed.
        self._failed: LRUCache[bytes, str] = LRUCache(cache_size)
        # Channel mode: key id -> (channel token, row or None for unknown).
        self._rows: LRUCache[str, tuple[int, AuthRow | None]] = LRUCache(cache_size)
        self._memo_secret = secrets.token_bytes(32)
        self._bcrypt_slots = threading.BoundedSemaphore(bcrypt_concurrency)
        # Rows without a check value: id -> [window start, bcrypt failures].
        self._legacy: LRUCache[str, list[float]] = LRUCache(cache_size)
        self._legacy_lock = threading.Lock()
        # Until when the database is taken to be down, and the one request
        # at a time that may try it meanwhile.
        self._down_until = 0.0
        self._probe = threading.Lock()
        # The outage being reported: when last, and the failures since.
        self._reported_at: float | None = None
        self._unreported = 0

    def __repr__(self) -> str:
        return f"Verifier(remembered={self.remembered}, channel={self.channel!r})"

    @property
    def remembered(self) -> int:
        """How many verified keys this process remembers."""
        return len(self._verified)

    @property
    def failures_remembered(self) -> int:
        """How many refused wrong keys this process remembers."""
        return len(self._failed)

    @property
    def rows_cached(self) -> int:
        """How many key rows channel mode holds (unknown ids included)."""
        return len(self._rows)

    def forget(self) -> None:
        """Drop every memory: the next request of each key is checked afresh."""
        self._verified.clear()
        self._failed.clear()
        self._rows.clear()

    def authenticate(self, key: ParsedKey | str) -> Principal:
        """Return the principal of ``key``.

        ``key`` is a parsed key, or the token as presented: a token this
        process has verified before is recognised without parsing it again;
        any other is parsed first, so a malformed one costs no database
        work.

        :raises InvalidKeyError: malformed or unknown id;
            :class:`~apikey_middleware.errors.RejectedKeyError` (a subclass,
            alike on the wire) for a known id with the wrong secret, revoked
            or expired.
        :raises StoreUnavailableError: the database did not answer, or too
            many bcrypt checks were waiting.
        """
        token = key if isinstance(key, str) else key.key
        if len(token) != KEY_LENGTH:
            raise InvalidKeyError
        memo = hashlib.blake2b(
            token.encode("utf-8", "surrogatepass"), key=self._memo_secret
        ).digest()
        known = self._verified.get(memo)
        row = None
        if known is not None:
            # Verified before: the same row (same hash, scopes, state) and
            # not expired since means the same answer.
            key_id, verified_row, principal = known
            row = self._row(key_id)
            if row == verified_row and (row.expires_at is None or row.expires_at > utcnow()):
                return principal
        parsed = parse_key(key) if isinstance(key, str) else key
        if parsed is None:
            raise InvalidKeyError
        if known is None:
            row = self._row(parsed.key_id)
        if row is None:
            raise InvalidKeyError
        if row.key_type != parsed.key_type or row.revoked_at is not None:
            raise RejectedKeyError(parsed.key_id)
        if row.expires_at is not None and row.expires_at <= utcnow():
            raise RejectedKeyError(parsed.key_id)
        check = row.key_check
        if check is not None:
            # A wrong secret stops here, for one HMAC: only the right key
            # (or one guess in 2**48) goes on to bcrypt.
            if not hmac.compare_digest(self.hasher.check_value(token), check):
                self._check_failed()
                raise RejectedKeyError(parsed.key_id)
        # A wrong key stays wrong for as long as the stored hash is the same.
        elif self._failed.get(memo) == row.key_hash or not self._legacy_take(parsed.key_id):
            raise RejectedKeyError(parsed.key_id)
        if not self._bcrypt(token, row.key_hash):
            self._failed.set(memo, row.key_hash)
            self._check_failed()
            raise RejectedKeyError(parsed.key_id)
        if check is None:
            row = self._set_check(parsed.key_id, token, row)
        if self._on_verified is not None:
            self._on_verified()
        principal = Principal(
            parsed.key_id,
            row.name,
            parsed.key_type,
            frozenset(row.scopes.split()),
            row.owner,
            row.rate_limit,
        )
        self._verified.set(memo, (parsed.key_id, row, principal))
        return principal

    def _check_failed(self) -> None:
        if self._on_check_failed is not None:
            self._on_check_failed()

    def _legacy_take(self, key_id: str) -> bool:
        """Spend one bcrypt of a row without check value, as the attempt
        arrives (so concurrent ones count); ``False`` once none is left."""
        now = time.monotonic()
        with self._legacy_lock:
            entry = self._legacy.get(key_id)
            if entry is None or now - entry[0] >= LEGACY_WINDOW:
                self._legacy.set(key_id, [now, 1.0])
                return True
            if entry[1] >= LEGACY_BUDGET:
                return False
            entry[1] += 1
            return True

    def _read(self, key_id: str) -> AuthRow | None:
        probing = False
        if time.monotonic() < self._down_until:
            if not self._probe.acquire(blocking=False):
                raise StoreUnavailableError("the database did not answer a moment ago")
            probing = True
        try:
            row = self._read_now(key_id, probing)
        finally:
            if probing:
                self._probe.release()
        self._down_until = 0.0
        if self._reported_at is not None:
            refused, self._reported_at, self._unreported = self._unreported, None, 0
            logger.warning("API key store answers again (%d more refused since)", refused)
        return row

    def _read_now(self, key_id: str, probing: bool) -> AuthRow | None:
        started = time.monotonic()
        for attempt in (1, 2):
            try:
                with self.engine.connect() as connection:
                    # Waited in the pool while another request found the
                    # database down: no need to wait once more.
                    if not probing and time.monotonic() < self._down_until:
                        raise StoreUnavailableError("the database did not answer a moment ago")
                    row = connection.execute(_AUTH_QUERY, {"key_id": key_id}).first()
                return None if row is None else AuthRow(*row)
            except exc.DBAPIError as error:
                # A connection the server dropped (restart, failover,
                # pg_terminate_backend) is thrown away by SQLAlchemy; one
                # more try on a fresh one saves the request. Not after a
                # wait: the answer must come within about one timeout.
                slow = time.monotonic() - started >= self.timeout / 2
                if attempt == 1 and error.connection_invalidated and not slow:
                    continue
                raise self._unavailable(error, slow=slow) from None
            except exc.SQLAlchemyError as error:
                slow = time.monotonic() - started >= self.timeout / 2
                raise self._unavailable(error, slow=slow) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _unavailable(self, error: exc.SQLAlchemyError, *, slow: bool) -> StoreUnavailableError:
        if slow:
            # It hangs rather than refuses: spare the next requests the wait.
            self._down_until = time.monotonic() + self.timeout
        detail = describe_fault(error)
        if any(marker in detail for marker in _MISSING_TABLE) and not self._has_tables():
            logger.error(
                "the API key tables are missing from %s: run 'apikey init-db' (or"
                " 'flask apikeys init-db'); refusing requests until then",
                self.engine.url.render_as_string(hide_password=True),
            )
            return StoreUnavailableError("the API key tables are missing: run init-db")
        now = time.monotonic()
        if self._reported_at is None or now - self._reported_at >= OUTAGE_REPORT_INTERVAL:
            since = f" ({self._unreported} more refused since)" if self._unreported else ""
            self._reported_at, self._unreported = now, 0
            logger.error("API key store unavailable, refusing requests: %s%s", detail, since)
        else:
            self._unreported += 1
        return StoreUnavailableError(detail)

    def _has_tables(self) -> bool:
        try:
            with self.engine.connect() as connection:
                return sa.inspect(connection).has_table(keys_table.name)
        except exc.SQLAlchemyError:
            return True  # cannot tell: say only what the driver said

    def _row(self, key_id: str) -> AuthRow | None:
        channel = self.channel
        token = None if channel is None else channel.token()
        if token is None:
            return self._read(key_id)
        cached = self._rows.get(key_id)
        if cached is not None and cached[0] == token:
            return cached[1]
        row = self._read(key_id)
        # Kept only if nothing changed while it was read.
        if t.cast(ChangeChannel, channel).token() == token:
            self._rows.set(key_id, (token, row))
        return row

    def _set_check(self, key_id: str, token: str, row: AuthRow) -> AuthRow:
        """Give a row made before check values existed its own; the row as
        it now is. A failure only means the next process tries again."""
        value = self.hasher.check_value(token)
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    _SET_CHECK_QUERY,
                    {"check_id": key_id, "check_hash": row.key_hash, "check_value": value},
                )
                announce(connection, key_id)
        except exc.SQLAlchemyError as error:
            logger.error("could not store a key's check value: %s", describe_fault(error))
            return row
        return row._replace(key_check=value)

    def _bcrypt(self, key: str, key_hash: str) -> bool:
        if not self._bcrypt_slots.acquire(timeout=self.timeout):
            logger.warning("too many bcrypt checks waiting, refusing the request")
            raise StoreUnavailableError("too many bcrypt checks waiting")
        try:
            return self.hasher.verify(key, key_hash)
        finally:
            self._bcrypt_slots.release()
