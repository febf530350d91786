"""The usage log in the database: writing batches of logged requests, reading them.

The store's facade
(:meth:`~apikey_middleware.store.SQLAlchemyKeyStore.record_usage`,
:meth:`~apikey_middleware.store.SQLAlchemyKeyStore.usage`) and the
:class:`~apikey_middleware.usage.UsageWriter` both come here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine

from ._time import check_aware
from .schema import MAX_PATH_LENGTH, UTCDateTime, keys_table, usage_table
from .usage import UsageRecord

_USAGE_COLUMNS = ("key_id", "occurred_at", "method", "path", "status", "remote_addr")
_USAGE_TIME = UTCDateTime()

# Moves a key's last_used_at forward, never back.
_TOUCH_QUERY = (
    sa.update(keys_table)
    .where(
        keys_table.c.id == sa.bindparam("touch_id"),
        sa.or_(
            keys_table.c.last_used_at.is_(None),
            keys_table.c.last_used_at < sa.bindparam("touch_at", type_=UTCDateTime()),
        ),
    )
    .values(last_used_at=sa.bindparam("touch_at", type_=UTCDateTime()))
)


@functools.cache
def _usage_insert(dialect: Dialect) -> tuple[str, bool]:
    """The usage INSERT in the driver's own SQL and whether it takes tuples."""
    compiled = (
        sa.insert(usage_table)
        .values({name: sa.bindparam(name) for name in _USAGE_COLUMNS})
        .compile(dialect=dialect)
    )
    if compiled.positional and tuple(compiled.positiontup or ()) != _USAGE_COLUMNS:
        raise RuntimeError("unexpected parameter order in the usage INSERT")  # pragma: no cover
    return compiled.string, bool(compiled.positional)


class UsageLog:
    """The usage table of ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __repr__(self) -> str:
        return f"UsageLog({self.engine.url.render_as_string(hide_password=True)!r})"

    def record(
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

    def read(
        self, key_id: str, *, since: datetime | None = None, limit: int | None = None
    ) -> list[UsageRecord]:
        """The logged requests of ``key_id``, newest first."""
        since = check_aware("since", since)
        columns = usage_table.c
        query = (
            sa.select(
                columns.key_id,
                columns.occurred_at,
                columns.method,
                columns.path,
                columns.status,
                columns.remote_addr,
            )
            .where(columns.key_id == key_id)
            .order_by(columns.occurred_at.desc(), columns.id.desc())
        )
        if since is not None:
            query = query.where(columns.occurred_at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [UsageRecord(*row) for row in connection.execute(query)]
