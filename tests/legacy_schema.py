"""The tables as the first release (0.1.0) made them, frozen for upgrade tests.

Plain SQLAlchemy types only, so that later changes to the package's own
types cannot change what an old database looks like.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from apikey_middleware.hashing import KeyHasher

legacy_metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
_TIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

keys_0_1 = sa.Table(
    "apikey_keys",
    legacy_metadata,
    sa.Column("id", sa.String(14), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("key_type", sa.String(4), nullable=False),
    sa.Column("key_hash", sa.String(60), nullable=False),
    sa.Column("scopes", sa.String(2000), nullable=False),
    sa.Column("owner", sa.String(200), index=True),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("expires_at", _TIME),
    sa.Column("revoked_at", _TIME),
    sa.Column("last_used_at", _TIME),
    sa.Column("replaces", sa.String(14), sa.ForeignKey("apikey_keys.id")),
)

usage_0_1 = sa.Table(
    "apikey_usage",
    legacy_metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("key_id", sa.String(14), nullable=False),
    sa.Column("occurred_at", _TIME, nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("path", sa.String(1000), nullable=False),
    sa.Column("status", sa.SmallInteger(), nullable=False),
    sa.Column("remote_addr", sa.String(64)),
    sa.Index("ix_apikey_usage_key_id_occurred_at", "key_id", "occurred_at"),
)


def fill_0_1(engine: sa.Engine, key: str, key_id: str, hasher: KeyHasher, at: datetime) -> None:
    """Create the 0.1.0 tables and put in one live key and two usage rows,
    as that release wrote them (naive UTC times)."""
    legacy_metadata.create_all(engine)
    naive = at.replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(
            keys_0_1.insert().values(
                id=key_id,
                name="from 0.1",
                key_type="live",
                key_hash=hasher.hash(key),
                scopes="clients:read",
                owner="acme",
                created_at=naive,
            )
        )
        connection.execute(
            usage_0_1.insert(),
            [
                {
                    "key_id": key_id,
                    "occurred_at": naive,
                    "method": "GET",
                    "path": "/v1/clients",
                    "status": status,
                    "remote_addr": "203.0.113.9",
                }
                for status in (200, 403)
            ],
        )
