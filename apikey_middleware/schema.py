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
leaks_table = t.cast(sa.Table, LeakRow.__table__)
leak_reports_table = t.cast(sa.Table, LeakReport.__table__)
meta_table = t.cast(sa.Table, MetaRow.__table__)

#: Columns added since the first release, by table: :func:`upgrade` adds
#: those that a database made by an earlier release lacks.
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("apikey_keys", "key_check"),
    ("apikey_keys", "rate_limit"),
)


def upgrade(connection: Connection) -> list[str]:
    """Create missing tables and add the columns a database made by an
    earlier release lacks; the ``table.column`` names added. Idempotent.

    On PostgreSQL it also (re)makes the trigger that announces changes to
    the keys table made by plain SQL (see
    :func:`~apikey_middleware.changes.install_notify_trigger`).
    """
    with _one_at_a_time(connection):
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
    SQLite has no such lock: the store retries there instead.
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
    else:
        yield
