"""The store's tables: their types, their metadata, and their upgrade.

Include :data:`metadata` in your own Alembic ``target_metadata``; migrations
that autogenerate from it name :class:`UTCDateTime`, so add
``import apikey_middleware.schema`` to your ``script.py.mako``.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .buckets import BUCKETS
from .changes import install_notify_trigger
from .keys import ID_LENGTH

#: The longest key name and owner.
MAX_NAME_LENGTH = 200
#: The longest request path kept in the usage log.
MAX_PATH_LENGTH = 1000
#: The longest leak location (a URL) and leak source kept.
MAX_URL_LENGTH = 2000
MAX_SOURCE_LENGTH = 100
#: The longest rate limit a key may have, in the ``limits`` notation.
MAX_RATE_LIMIT_LENGTH = 200
#: The length of a usage row's merge key (hex digits).
MERGE_KEY_LENGTH = 32


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
    # The key's own rate limit, such as "100/minute" (NULL: the default).
    rate_limit: Mapped[str | None] = mapped_column(sa.String(MAX_RATE_LIMIT_LENGTH))


class UsageRow(Base):
    """Requests that presented a known key id: one, or several identical ones
    (same key, method, path, status and address) in the same minute."""

    __tablename__ = "apikey_usage"
    __table_args__ = (
        sa.Index("ix_apikey_usage_key_id_occurred_at", "key_id", "occurred_at"),
        # Retention deletes by time alone.
        sa.Index("ix_apikey_usage_occurred_at", "occurred_at"),
        sa.Index("uq_apikey_usage_merge_key", "merge_key", unique=True),
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    key_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    method: Mapped[str] = mapped_column(sa.String(16))
    path: Mapped[str] = mapped_column(sa.String(MAX_PATH_LENGTH))
    status: Mapped[int] = mapped_column(sa.SmallInteger())
    remote_addr: Mapped[str | None] = mapped_column(sa.String(64))
    # How many requests the row stands for; rows made before it existed
    # stand for one each.
    requests: Mapped[int] = mapped_column(sa.Integer(), server_default=sa.text("1"))
    # A digest of what makes requests identical and of their minute: later
    # identical requests of that minute are added to this row. NULL in rows
    # made before it existed, which nothing is added to.
    merge_key: Mapped[str | None] = mapped_column(sa.String(MERGE_KEY_LENGTH))


class UsageRollup(Base):
    """Requests per key, status and minute, hour or day: what usage summaries
    read, so that their cost follows the buckets asked for, not the requests."""

    __tablename__ = "apikey_usage_rollups"
    __table_args__ = (sa.Index("ix_apikey_usage_rollups_period_start", "period", "start"),)

    period: Mapped[str] = mapped_column(sa.String(6), primary_key=True)
    key_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    status: Mapped[int] = mapped_column(sa.SmallInteger(), primary_key=True)
    requests: Mapped[int] = mapped_column(sa.BigInteger())


class UsageBatch(Base):
    """A batch of usage the writer wrote, by its id: written in the same
    transaction, so that a batch retried after its commit's answer was lost
    is not counted twice."""

    __tablename__ = "apikey_usage_batches"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    written_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class LeakRow(Base):
    """One place a key of ours was found."""

    __tablename__ = "apikey_leaks"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    key_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("apikey_keys.id"), index=True
    )
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    url: Mapped[str] = mapped_column(sa.String(MAX_URL_LENGTH))
    source: Mapped[str] = mapped_column(sa.String(MAX_SOURCE_LENGTH))
    action: Mapped[str] = mapped_column(sa.String(16))
    # The report it came in (a row of apikey_leak_reports), if any.
    report_digest: Mapped[str | None] = mapped_column(sa.String(64))


class LeakReport(Base):
    """A report acted on, by the SHA-256 of its body: the same report twice
    is refused, and a report is acted on only once."""

    __tablename__ = "apikey_leak_reports"

    digest: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MetaRow(Base):
    """A fact about the database as a whole, by name: such as the keyed
    fingerprint of the pepper its keys were hashed with (see
    :mod:`~apikey_middleware.pepper`)."""

    __tablename__ = "apikey_meta"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(200))


#: The tables as Core objects, for the queries built once.
keys_table = t.cast(sa.Table, ApiKey.__table__)
usage_table = t.cast(sa.Table, UsageRow.__table__)
rollups_table = t.cast(sa.Table, UsageRollup.__table__)
batches_table = t.cast(sa.Table, UsageBatch.__table__)
leaks_table = t.cast(sa.Table, LeakRow.__table__)
leak_reports_table = t.cast(sa.Table, LeakReport.__table__)
meta_table = t.cast(sa.Table, MetaRow.__table__)

#: Columns added since the first release, by table: :func:`upgrade` adds
#: those that a database made by an earlier release lacks.
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("apikey_keys", "key_check"),
    ("apikey_keys", "rate_limit"),
    ("apikey_usage", "requests"),
    ("apikey_usage", "merge_key"),
)


def upgrade(connection: Connection) -> list[str]:
    """Create missing tables and add the columns a database made by an
    earlier release lacks; the ``table.column`` names added. Idempotent.

    On PostgreSQL it also (re)makes the trigger that announces changes to
    the keys table made by plain SQL (see
    :func:`~apikey_middleware.changes.install_notify_trigger`).
    """
    with _one_at_a_time(connection):
        had_rollups = sa.inspect(connection).has_table(rollups_table.name)
        metadata.create_all(connection)
        inspector = sa.inspect(connection)
        added = []
        for table_name, column_name in ADDED_COLUMNS:
            present = {column["name"] for column in inspector.get_columns(table_name)}
            if column_name in present:
                continue
            table = metadata.tables[table_name]
            column = sa.schema.CreateColumn(table.c[column_name]).compile(
                dialect=connection.dialect
            )
            name = connection.dialect.identifier_preparer.format_table(table)
            connection.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN {column}")
            added.append(f"{table_name}.{column_name}")
        for table in (usage_table,):
            present = {str(index["name"]) for index in inspector.get_indexes(table.name)}
            for index in sorted(table.indexes, key=lambda index: str(index.name)):
                if index.name not in present:
                    index.create(connection)
        if not had_rollups:
            fill_rollups(connection)
        install_notify_trigger(connection)
    return added


#: The PostgreSQL advisory lock and MySQL named lock that schema changes take.
SCHEMA_LOCK = "apikey_middleware.schema"
_SCHEMA_LOCK_ID = 0x61706B6D  # "apkm"


@contextmanager
def _one_at_a_time(connection: Connection) -> Iterator[None]:
    """Serialise schema changes on a database server.

    Every worker of a server may call ``create_schema()`` as it starts; two
    that look for a table at once both try to create it, and one fails.
    """
    dialect = connection.dialect.name
    if dialect == "postgresql":
        # Held until the transaction ends, with the schema changes it made.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _SCHEMA_LOCK_ID})
        yield
    elif dialect in ("mysql", "mariadb"):
        # MySQL commits each DDL statement: a named lock, released by hand.
        name = f"{SCHEMA_LOCK}.{connection.engine.url.database or ''}"[:64]
        taken = connection.scalar(sa.text("SELECT GET_LOCK(:name, 60)"), {"name": name})
        if taken != 1:
            raise sa.exc.OperationalError("SELECT GET_LOCK", {}, TimeoutError(SCHEMA_LOCK))
        try:
            yield
        finally:
            connection.scalar(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
    elif dialect == "sqlite":
        # The driver starts no transaction for DDL: take SQLite's write lock
        # by hand, unless the caller's transaction already holds one, and end
        # what was begun here (on an autocommit connection nothing else would).
        driver = connection.connection.driver_connection
        began = not getattr(driver, "in_transaction", True)
        if began:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if began and getattr(driver, "in_transaction", False):
                connection.exec_driver_sql("ROLLBACK")
            raise
        if began and getattr(driver, "in_transaction", False):
            connection.exec_driver_sql("COMMIT")
    else:
        yield


def _truncated(period: str, dialect: str) -> sa.ColumnElement[t.Any]:
    """SQL for ``occurred_at`` cut to the start of its ``period``, as stored."""
    column = usage_table.c.occurred_at
    if dialect == "postgresql":
        return sa.func.date_trunc(sa.literal_column(f"'{period}'"), column)
    formats = {"minute": "%Y-%m-%d %H:%M", "hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d 00:00"}
    if dialect == "sqlite":  # times are text: SQLAlchemy's own format
        return sa.func.strftime(sa.literal_column(f"'{formats[period]}:00.000000'"), column)
    mysql_format = formats[period].replace("%M", "%i")
    return sa.func.date_format(column, sa.literal_column(f"'{mysql_format}:00'"))


def fill_rollups(connection: Connection) -> None:
    """Roll up the usage rows already there (a database made before roll-ups
    existed), in one ``INSERT ... SELECT`` per period."""
    dialect = connection.dialect.name
    columns = usage_table.c
    for period in BUCKETS:
        start = _truncated(period, dialect)
        query = sa.select(
            sa.literal_column(f"'{period}'"),
            columns.key_id,
            start,
            columns.status,
            sa.func.sum(columns.requests),
        ).group_by(columns.key_id, start, columns.status)
        connection.execute(
            sa.insert(rollups_table).from_select(
                ["period", "key_id", "start", "status", "requests"], query
            )
        )
