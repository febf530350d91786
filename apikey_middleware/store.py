"""The key store: keys kept as bcrypt hashes in any SQLAlchemy database.

This is the *backend* role: it turns a presented key into a
:class:`~apikey_middleware.principal.Principal` or refuses it, and it manages
the key records. It knows nothing of HTTP.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import threading
import time
import typing as t
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ._lru import LRUCache
from ._watchdog import StatementWatchdog
from .changes import NOTIFY_CHANNEL, ChangeChannel, channel_for
from .errors import (
    InvalidKeyError,
    KeyNotFoundError,
    RejectedKeyError,
    ServiceUnavailableError,
)
from .hashing import DEFAULT_ROUNDS, KeyHasher
from .keys import (
    ID_LENGTH,
    KEY_LENGTH,
    KEY_TYPES,
    KeyType,
    ParsedKey,
    display_prefix,
    generate_key,
    holds_key,
    is_key_id,
    parse_key,
    shown_safely,
)
from .principal import Principal, normalize_scopes

logger = logging.getLogger("apikey_middleware")

MAX_NAME_LENGTH = 200
#: How many verified keys (and failed ones, and rows) a store remembers
#: when not told otherwise.
DEFAULT_CACHE_SIZE = 10_000
REVOCATION_MODES = ("immediate", "channel")
Revocation = t.Literal["immediate", "channel"]
_CREATE_ATTEMPTS = 3

State = t.Literal["active", "expiring", "expired", "revoked"]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime, stored as a naive UTC one with microseconds.

    Naive storage behaves the same on every backend (MySQL's ``TIMESTAMP``
    and PostgreSQL's ``timestamptz`` both convert by session time zone);
    MySQL and MariaDB are told to keep microseconds. Naive datetimes are
    refused on the way in, so the two kinds are never mixed.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[t.Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: give a timezone-aware one, such as UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""

    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


#: The store's tables, for ``metadata.create_all`` or Alembic's
#: ``target_metadata``.
metadata = Base.metadata


class ApiKey(Base):
    """One issued key. Only its bcrypt hash is kept, never the key."""

    __tablename__ = "apikey_keys"

    id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(MAX_NAME_LENGTH))
    key_type: Mapped[str] = mapped_column(sa.String(4))
    key_hash: Mapped[str] = mapped_column(sa.String(60))
    # The key's short keyed fingerprint (KeyHasher.check_value), compared
    # before bcrypt. NULL in rows made before it existed: such a row gets it
    # on its key's next successful use.
    key_check: Mapped[str | None] = mapped_column(sa.String(16))
    # Space-separated, as in OAuth (RFC 6749 §3.3): scopes hold no spaces.
    scopes: Mapped[str] = mapped_column(sa.String(2000))
    owner: Mapped[str | None] = mapped_column(sa.String(MAX_NAME_LENGTH), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    replaces: Mapped[str | None] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("apikey_keys.id")
    )


MAX_PATH_LENGTH = 1000


class UsageRow(Base):
    """One request that presented a known key id."""

    __tablename__ = "apikey_usage"
    __table_args__ = (sa.Index("ix_apikey_usage_key_id_occurred_at", "key_id", "occurred_at"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    key_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    method: Mapped[str] = mapped_column(sa.String(16))
    path: Mapped[str] = mapped_column(sa.String(MAX_PATH_LENGTH))
    status: Mapped[int] = mapped_column(sa.SmallInteger())
    remote_addr: Mapped[str | None] = mapped_column(sa.String(64))


_keys = t.cast(sa.Table, ApiKey.__table__)
_USAGE_COLUMNS = ("key_id", "occurred_at", "method", "path", "status", "remote_addr")
_USAGE_TIME = UTCDateTime()


@functools.cache
def _usage_insert(dialect: Dialect) -> tuple[str, bool]:
    """The usage INSERT in the driver's own SQL and whether it takes tuples."""
    table = t.cast(sa.Table, UsageRow.__table__)
    compiled = (
        sa.insert(table)
        .values({name: sa.bindparam(name) for name in _USAGE_COLUMNS})
        .compile(dialect=dialect)
    )
    if compiled.positional and tuple(compiled.positiontup or ()) != _USAGE_COLUMNS:
        raise RuntimeError("unexpected parameter order in the usage INSERT")  # pragma: no cover
    return compiled.string, bool(compiled.positional)


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


# The one query on the request path: a primary-key read of what
# authentication needs, built once so SQLAlchemy compiles it once.
_AUTH_QUERY = sa.select(
    _keys.c.key_type,
    _keys.c.key_hash,
    _keys.c.key_check,
    _keys.c.name,
    _keys.c.scopes,
    _keys.c.owner,
    _keys.c.expires_at,
    _keys.c.revoked_at,
).where(_keys.c.id == sa.bindparam("key_id"))


# Gives a row made before check values existed its own, once.
_SET_CHECK_QUERY = (
    sa.update(_keys)
    .where(
        _keys.c.id == sa.bindparam("check_id"),
        _keys.c.key_hash == sa.bindparam("check_hash"),
        _keys.c.key_check.is_(None),
    )
    .values(key_check=sa.bindparam("check_value"))
)

#: Columns added since the first release, by table: ``create_schema`` adds
#: those that a database made by an earlier release lacks.
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (("apikey_keys", "key_check"),)


_TOUCH_QUERY = (
    sa.update(_keys)
    .where(
        _keys.c.id == sa.bindparam("touch_id"),
        sa.or_(
            _keys.c.last_used_at.is_(None),
            _keys.c.last_used_at < sa.bindparam("touch_at", type_=UTCDateTime()),
        ),
    )
    .values(last_used_at=sa.bindparam("touch_at", type_=UTCDateTime()))
)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store knows of a key: everything but the secret."""

    id: str
    name: str
    key_type: KeyType
    scopes: tuple[str, ...]
    owner: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    replaces: str | None

    @property
    def prefix(self) -> str:
        """The short display form, such as ``sk_live_ab12…``."""
        return display_prefix(self.key_type, self.id)

    def state(self, now: datetime | None = None) -> State:
        """``revoked``, ``expired``, ``expiring`` (has an end date) or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None:
            return "expired" if self.expires_at <= (now or utcnow()) else "expiring"
        return "active"

    @classmethod
    def _from_model(cls, model: ApiKey) -> KeyRecord:
        return cls(
            id=model.id,
            name=model.name,
            key_type=t.cast(KeyType, model.key_type),
            scopes=tuple(model.scopes.split()),
            owner=model.owner,
            created_at=model.created_at,
            expires_at=model.expires_at,
            revoked_at=model.revoked_at,
            last_used_at=model.last_used_at,
            replaces=model.replaces,
        )


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just made: the only time its secret is known.

    ``key`` is the full secret to hand to the client; it is kept out of
    ``repr()``.
    """

    key: str = field(repr=False)
    record: KeyRecord

    @property
    def id(self) -> str:
        """The public key id."""
        return self.record.id


class UsageRecord(t.NamedTuple):
    """One logged request of a key.

    A named tuple in the column order of the usage table, so that the
    writer can hand a batch of them to the database as they are.
    """

    key_id: str
    occurred_at: datetime
    method: str
    path: str
    status: int
    remote_addr: str | None


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_name(what: str, value: object, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{what} must be a non-empty string of at most {MAX_NAME_LENGTH} characters"
        )
    if holds_key(value):
        raise ValueError(f"{what} must not hold an API key (the value is not shown)")
    if _CONTROL_RE.search(value):
        raise ValueError(f"{what} must not hold control characters")
    return value.strip()


def _check_aware(what: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def _sqlite_on_connect(dbapi_connection: t.Any, connection_record: t.Any) -> None:
    # WAL lets readers go on while a revoke writes; foreign keys are off in
    # SQLite unless asked for.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _server_connect_args(parsed: sa.URL, timeout: float) -> dict[str, t.Any]:
    """Driver options that bound every wait on a database server by ``timeout``."""
    seconds = max(1, math.ceil(timeout))
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        # The server ends a statement that runs, or waits for a lock, too
        # long; the watchdog (below) covers a connection that stops answering.
        milliseconds = max(1, round(timeout * 1000))
        options = f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}"
        given = parsed.query.get("options")
        if isinstance(given, str) and given:
            options = f"{given} {options}"
        return {"connect_timeout": seconds, "options": options}
    if backend in ("mysql", "mariadb"):
        args: dict[str, t.Any] = {
            "connect_timeout": seconds,
            "read_timeout": seconds,
            "write_timeout": seconds,
        }
        if "init_command" not in parsed.query:
            args["init_command"] = (
                f"SET SESSION lock_wait_timeout = {seconds}, innodb_lock_wait_timeout = {seconds}"
            )
        return args
    return {"connect_timeout": seconds}


def create_store_engine(url: str | sa.URL, *, timeout: float = 5.0) -> Engine:
    """Create an engine from ``url`` set up for the store.

    Every wait is bounded by about ``timeout`` seconds, so that a fault
    becomes a quick 503 rather than a hung request: connecting, waiting for
    the pool, and waiting on a locked SQLite file; on PostgreSQL a
    statement or lock wait (``statement_timeout``, ``lock_timeout``) and a
    connection that stops answering (a watchdog cuts it); on MySQL and
    MariaDB lock waits and reads and writes on the connection.

    :raises ValueError: if the URL cannot be parsed or has no driver here.
    """
    try:
        parsed = sa.make_url(url)
    except exc.ArgumentError:
        raise ValueError("cannot parse the database URL") from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    in_memory = backend == "sqlite" and parsed.database in (None, "", ":memory:")
    options: dict[str, t.Any] = {} if in_memory else {"pool_timeout": timeout}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": timeout}
    elif backend in ("postgresql", "mysql", "mariadb"):
        options["connect_args"] = _server_connect_args(parsed, timeout)
    try:
        engine = sa.create_engine(parsed, **options)
    except (exc.NoSuchModuleError, ImportError) as error:
        raise ValueError(f"no database driver for {shown}: {error}") from None
    if backend == "sqlite" and not in_memory:
        event.listen(engine, "connect", _sqlite_on_connect)
    elif backend == "postgresql":
        # A little after the server's own timeouts, which end a statement
        # more gently (the connection survives).
        StatementWatchdog(engine, timeout + 0.5)
    return engine


class SQLAlchemyKeyStore:
    """API keys in a SQLAlchemy database, kept only as bcrypt hashes.

    :param url_or_engine: a database URL, or an :class:`~sqlalchemy.engine.Engine`
        to use as it is. From a URL the store makes its own engine: SQLite
        in WAL mode with a busy timeout, and connect and pool timeouts
        everywhere.
    :param bcrypt_rounds: bcrypt's cost for new keys (4 to 31).
    :param pepper: a server-side secret mixed into every hash and never
        stored; defaults to ``APIKEY_PEPPER``. Keys hashed with one pepper
        only verify with the same pepper.
    :param cache_size: how many verified keys each process remembers, so
        bcrypt runs once per key rather than once per request; as many
        recently failed keys, so a repeated wrong key costs no bcrypt
        either; and, in channel mode, as many key rows.
    :param revocation: ``"immediate"`` (the default) reads the key's row on
        every request, so a revoke holds for the very next request in every
        process. ``"channel"`` keeps rows in memory and rereads them only
        when :mod:`~apikey_middleware.changes` says the database changed:
        at once on SQLite, when the notification arrives on PostgreSQL
        (milliseconds), within ``poll_interval`` on MySQL and MariaDB.
    :param poll_interval: seconds a cached row may be used where the
        database offers no change notice (MySQL, MariaDB).
    :param bcrypt_concurrency: how many bcrypt checks may run at once in
        this process (default: half the CPUs, at least one), so that a flood
        of wrong secrets cannot take every core; a check that waits longer
        than ``timeout`` is answered 503.
    :param timeout: seconds to wait for a connection or a lock before giving
        up (used only when the store makes the engine).
    :param retry_after: the ``Retry-After`` seconds of the 503 answered
        while the database cannot be reached.

    Several processes may share one database: every request reads the key's
    row, so a revoke in any process holds for the next request in all.

    .. code-block:: python

        store = SQLAlchemyKeyStore("sqlite:///apikeys.db")
        store.create_schema()
        issued = store.create_key("billing", key_type="live", scopes=["clients:read"])
        print(issued.key)  # shown once; only its hash is stored
    """

    #: The store's tables (for Alembic: ``target_metadata = store.metadata``).
    metadata: t.ClassVar[sa.MetaData] = metadata

    def __init__(
        self,
        url_or_engine: str | sa.URL | Engine,
        *,
        bcrypt_rounds: int = DEFAULT_ROUNDS,
        pepper: bytes | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        timeout: float = 5.0,
        retry_after: int = 5,
        revocation: Revocation = "immediate",
        poll_interval: float = 1.0,
        bcrypt_concurrency: int | None = None,
    ) -> None:
        if revocation not in REVOCATION_MODES:
            raise ValueError(
                f"revocation must be one of {', '.join(REVOCATION_MODES)}, not {revocation!r}"
            )
        if (
            isinstance(poll_interval, bool)
            or not isinstance(poll_interval, int | float)
            or poll_interval <= 0
        ):
            raise ValueError(f"poll_interval must be a positive number, not {poll_interval!r}")
        if bcrypt_concurrency is None:
            bcrypt_concurrency = max(1, (os.cpu_count() or 2) // 2)
        if (
            isinstance(bcrypt_concurrency, bool)
            or not isinstance(bcrypt_concurrency, int)
            or bcrypt_concurrency < 1
        ):
            raise ValueError(
                f"bcrypt_concurrency must be a positive integer, not {bcrypt_concurrency!r}"
            )
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
            self._owns_engine = False
        else:
            self.engine = create_store_engine(url_or_engine, timeout=timeout)
            self._owns_engine = True
        self.hasher = KeyHasher(bcrypt_rounds, pepper)
        self.timeout = timeout
        self.retry_after = retry_after
        self.revocation = revocation
        # Verified keys: a keyed digest of the key -> its id, the row it was
        # verified against and its principal. Never the key itself.
        self._verified: LRUCache[bytes, tuple[str, AuthRow, Principal]] = LRUCache(cache_size)
        # Keys that failed bcrypt, by the same digest -> the hash they failed.
        self._failed: LRUCache[bytes, str] = LRUCache(cache_size)
        self._memo_secret = secrets.token_bytes(32)
        self._bcrypt_slots = threading.BoundedSemaphore(bcrypt_concurrency)
        #: Where channel mode hears of changes (``None`` in immediate mode).
        self.channel: ChangeChannel | None = None
        # Channel mode: key id -> (channel token, row or None for unknown).
        self._rows: LRUCache[str, tuple[int, AuthRow | None]] = LRUCache(cache_size)
        if revocation == "channel":
            self.channel = channel_for(self.engine, poll_interval=poll_interval, timeout=timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.engine.url.render_as_string(hide_password=True)!r})"

    def create_schema(self) -> None:
        """Create the store's tables where they are missing, and add the
        columns a database made by an earlier release lacks (idempotent)."""
        with self.engine.begin() as connection:
            self.metadata.create_all(connection)
            inspector = sa.inspect(connection)
            for table_name, column_name in ADDED_COLUMNS:
                present = {column["name"] for column in inspector.get_columns(table_name)}
                if column_name in present:
                    continue
                table = self.metadata.tables[table_name]
                column = sa.schema.CreateColumn(table.c[column_name]).compile(
                    dialect=connection.dialect
                )
                name = connection.dialect.identifier_preparer.format_table(table)
                connection.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN {column}")

    def close(self) -> None:
        """Stop the change channel; close the pooled connections of an
        engine the store made."""
        if self.channel is not None:
            self.channel.close()
        if self._owns_engine:
            self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    # -- the request path ------------------------------------------------

    def _auth_row(self, key_id: str) -> AuthRow | None:
        started = time.monotonic()
        for attempt in (1, 2):
            try:
                with self.engine.connect() as connection:
                    row = connection.execute(_AUTH_QUERY, {"key_id": key_id}).first()
                return None if row is None else AuthRow(*row)
            except exc.DBAPIError as error:
                # A connection the server dropped (restart, failover,
                # pg_terminate_backend) is thrown away by SQLAlchemy; one
                # more try on a fresh one saves the request. Not after a
                # wait: the answer must come within about one timeout.
                if (
                    attempt == 1
                    and error.connection_invalidated
                    and time.monotonic() - started < self.timeout / 2
                ):
                    continue
                self._log_fault(error)
                raise ServiceUnavailableError(self.retry_after) from None
            except exc.SQLAlchemyError as error:
                self._log_fault(error)
                raise ServiceUnavailableError(self.retry_after) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _row(self, key_id: str) -> AuthRow | None:
        channel = self.channel
        token = None if channel is None else channel.token()
        if token is None:
            return self._auth_row(key_id)
        cached = self._rows.get(key_id)
        if cached is not None and cached[0] == token:
            return cached[1]
        row = self._auth_row(key_id)
        # Kept only if nothing changed while it was read.
        if t.cast(ChangeChannel, channel).token() == token:
            self._rows.set(key_id, (token, row))
        return row

    @staticmethod
    def _log_fault(
        error: exc.SQLAlchemyError, what: str = "API key store unavailable, refusing requests"
    ) -> None:
        cause = error.orig if isinstance(error, exc.DBAPIError) else error
        logger.error(
            "%s: %s: %s",
            what,
            type(cause).__name__,
            str(cause).splitlines()[0] if str(cause) else "",
        )

    def authenticate(self, key: ParsedKey | str) -> Principal:
        """Return the principal of ``key``, reading its row now.

        ``key`` is a parsed key, or the token as presented: a token this
        process has verified before is recognised without parsing it again;
        any other is parsed first, so a malformed one costs no database
        work.

        :raises InvalidKeyError: malformed or unknown id;
            :class:`~apikey_middleware.errors.RejectedKeyError` (a subclass,
            alike on the wire) for a known id with the wrong secret, revoked
            or expired.
        :raises ServiceUnavailableError: the database did not answer.
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
                raise RejectedKeyError(parsed.key_id)
        # A wrong key stays wrong for as long as the stored hash is the same.
        elif self._failed.get(memo) == row.key_hash:
            raise RejectedKeyError(parsed.key_id)
        if not self._verify(token, row.key_hash):
            self._failed.set(memo, row.key_hash)
            raise RejectedKeyError(parsed.key_id)
        if check is None:
            row = self._set_check(parsed.key_id, token, row)
        principal = Principal(
            parsed.key_id, row.name, parsed.key_type, frozenset(row.scopes.split()), row.owner
        )
        self._verified.set(memo, (parsed.key_id, row, principal))
        return principal

    def _set_check(self, key_id: str, token: str, row: AuthRow) -> AuthRow:
        """Give a row made before check values existed its own; the row as
        it now is. A failure only means the next process tries again."""
        value = self.hasher.check_value(token)
        try:
            with self._session() as session, session.begin():
                session.execute(
                    _SET_CHECK_QUERY,
                    {"check_id": key_id, "check_hash": row.key_hash, "check_value": value},
                )
                self._announce(session, key_id)
        except exc.SQLAlchemyError as error:
            self._log_fault(error, "could not store a key's check value")
            return row
        return row._replace(key_check=value)

    def _verify(self, key: str, key_hash: str) -> bool:
        if not self._bcrypt_slots.acquire(timeout=self.timeout):
            logger.warning("too many bcrypt checks waiting, refusing the request")
            raise ServiceUnavailableError(self.retry_after)
        try:
            return self.hasher.verify(key, key_hash)
        finally:
            self._bcrypt_slots.release()

    # -- managing keys ---------------------------------------------------

    @staticmethod
    def _announce(session: Session, key_id: str) -> None:
        # Processes in channel mode on PostgreSQL hear of the change when
        # the transaction commits (and not at all if it rolls back).
        if session.get_bind().dialect.name == "postgresql":
            session.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, key_id)))

    def create_key(
        self,
        name: str,
        *,
        key_type: str = "test",
        scopes: str | Iterable[str] = (),
        owner: str | None = None,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        """Make and store a new key; the returned :class:`IssuedKey` is the
        only place its secret will ever be.

        :raises ValueError: on a bad name, type, scope, owner or expiry.
        """
        if key_type not in KEY_TYPES:
            raise ValueError(
                f"key_type must be one of {', '.join(KEY_TYPES)}, not {shown_safely(str(key_type))}"
            )
        return self._issue(
            t.cast(str, _check_name("name", name)),
            key_type,
            normalize_scopes(scopes),
            _check_name("owner", owner, optional=True),
            _check_aware("expires_at", expires_at),
        )

    def _issue(
        self,
        name: str,
        key_type: str,
        scope_list: tuple[str, ...],
        owner: str | None,
        expires_at: datetime | None,
        replaces: str | None = None,
        retire: Callable[[Session, datetime], None] | None = None,
    ) -> IssuedKey:
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            parsed = generate_key(key_type)
            key_hash = self.hasher.hash(parsed.key)
            now = utcnow()
            model = ApiKey(
                id=parsed.key_id,
                name=name,
                key_type=key_type,
                key_hash=key_hash,
                key_check=self.hasher.check_value(parsed.key),
                scopes=" ".join(scope_list),
                owner=owner,
                created_at=now,
                expires_at=expires_at,
                replaces=replaces,
            )
            try:
                with self._session() as session, session.begin():
                    if retire is not None:
                        retire(session, now)
                    session.add(model)
                    self._announce(session, parsed.key_id)
            except exc.IntegrityError:
                # Two ids drawn alike (about 2**-72): draw again.
                if attempt == _CREATE_ATTEMPTS:
                    raise
                continue
            return IssuedKey(parsed.key, KeyRecord._from_model(model))
        raise AssertionError("unreachable")  # pragma: no cover

    def get_key(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id``, revoked or not, or ``None``."""
        if not isinstance(key_id, str) or not is_key_id(key_id):
            return None
        with self._session() as session:
            model = session.get(ApiKey, key_id)
            return None if model is None else KeyRecord._from_model(model)

    def list_keys(
        self, *, include_revoked: bool = False, owner: str | None = None
    ) -> list[KeyRecord]:
        """Records oldest first; revoked ones only with ``include_revoked``.

        Expired keys are listed: their :meth:`KeyRecord.state` says so.
        """
        query = sa.select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        if owner is not None:
            query = query.where(ApiKey.owner == owner)
        with self._session() as session:
            return [KeyRecord._from_model(model) for model in session.scalars(query)]

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke ``key_id`` now, for every process that uses this database.

        Revoking a revoked key changes nothing.

        :raises KeyNotFoundError: no key has this id.
        """
        if not isinstance(key_id, str) or not is_key_id(key_id):
            raise KeyNotFoundError(str(key_id))
        with self._session() as session, session.begin():
            # A single UPDATE first: on SQLite it takes the write lock at
            # once, waiting out a busy reader instead of failing.
            session.execute(
                sa.update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            model = session.get(ApiKey, key_id)
            if model is None:
                raise KeyNotFoundError(key_id)
            self._announce(session, key_id)
            return KeyRecord._from_model(model)

    def rotate(self, key_id: str, *, grace: timedelta = timedelta(0)) -> IssuedKey:
        """Replace ``key_id`` with a new key of the same name, type, scopes
        and owner; the old key keeps working for ``grace``, then is refused.

        With ``grace=0`` the old key is revoked at once; otherwise it expires
        at ``now + grace`` (or sooner, if it was to expire before). A key
        that had a lifetime passes it on: the new key expires that long
        after its creation. The new record's ``replaces`` names the old one.

        :raises KeyNotFoundError: no key has this id.
        :raises ValueError: the key is revoked, or ``grace`` is negative.
        """
        if not isinstance(grace, timedelta) or grace < timedelta(0):
            raise ValueError("grace must be a timedelta of zero or more")
        old = self.get_key(key_id) if isinstance(key_id, str) else None
        if old is None:
            raise KeyNotFoundError(str(key_id))
        if old.revoked_at is not None:
            raise ValueError(f"key {key_id!r} is revoked and cannot be rotated")
        now = utcnow()
        lifetime = None if old.expires_at is None else old.expires_at - old.created_at

        def retire(session: Session, now: datetime) -> None:
            if grace:
                end = now + grace
                if old.expires_at is not None and old.expires_at < end:
                    end = old.expires_at
                change: dict[str, datetime] = {"expires_at": end}
            else:
                change = {"revoked_at": now}
            result = session.execute(
                sa.update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(**change)
            )
            if t.cast(sa.CursorResult[t.Any], result).rowcount != 1:
                raise ValueError(f"key {key_id!r} is revoked and cannot be rotated")
            self._announce(session, key_id)

        return self._issue(
            old.name,
            old.key_type,
            old.scopes,
            old.owner,
            None if lifetime is None else now + lifetime,
            replaces=old.id,
            retire=retire,
        )

    # -- usage -----------------------------------------------------------

    def record_usage(
        self, records: Sequence[UsageRecord], *, last_used: Mapping[str, datetime] | None = None
    ) -> None:
        """Write logged requests in one transaction and move each key's
        ``last_used_at`` forward: to its time in ``last_used`` (the usage
        writer gives the latest accepted request of each key), or without
        it to the latest of its records."""
        if not records:
            return
        if last_used is None:
            latest: dict[str, datetime] = {}
            for record in records:
                if record.key_id not in latest or latest[record.key_id] < record.occurred_at:
                    latest[record.key_id] = record.occurred_at
            last_used = latest
        with self.engine.begin() as connection:
            dialect = connection.dialect
            statement, positional = _usage_insert(dialect)
            to_db = _USAGE_TIME.bind_processor(dialect) or (lambda value: value)
            rows = [
                (
                    key_id,
                    to_db(occurred_at),
                    method[:16],
                    path[:MAX_PATH_LENGTH],
                    status,
                    remote_addr and remote_addr[:64],
                )
                for key_id, occurred_at, method, path, status, remote_addr in records
            ]
            # Straight to the driver's executemany: one row per request is
            # the usage log's whole cost, and SQLAlchemy's per-row parameter
            # handling would be most of it.
            connection.exec_driver_sql(
                statement,
                rows
                if positional
                else [dict(zip(_USAGE_COLUMNS, row, strict=True)) for row in rows],
            )
            # Sorted, so that writers in several processes lock rows in one
            # order and cannot deadlock one another.
            if last_used:
                connection.execute(
                    _TOUCH_QUERY,
                    [{"touch_id": key, "touch_at": last_used[key]} for key in sorted(last_used)],
                )

    def usage(
        self, key_id: str, *, since: datetime | None = None, limit: int | None = None
    ) -> list[UsageRecord]:
        """The logged requests of ``key_id``, newest first.

        :param since: only requests at or after this aware datetime.
        :param limit: at most this many.
        """
        since = _check_aware("since", since)
        query = (
            sa.select(UsageRow)
            .where(UsageRow.key_id == key_id)
            .order_by(UsageRow.occurred_at.desc(), UsageRow.id.desc())
        )
        if since is not None:
            query = query.where(UsageRow.occurred_at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [
                UsageRecord(
                    row.key_id, row.occurred_at, row.method, row.path, row.status, row.remote_addr
                )
                for row in session.scalars(query)
            ]
