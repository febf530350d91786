"""The usage log in the database: writing batches of logged requests, reading
them, summing them up, deleting old ones.

A batch is written in one transaction: its rows, added to the rows of
identical requests of the same minute already stored (an upsert on the
row's merge key); the per-minute, per-hour and per-day roll-ups summaries
read; the keys' ``last_used_at``; and the batch's id, so that the same batch
written again (its first commit's answer lost) changes nothing.

The store's facade (:meth:`~apikey_middleware.usage_queries.UsageQueries.usage`
and the methods beside it) and the :class:`~apikey_middleware.usage.UsageWriter`
both come here.
"""

from __future__ import annotations

import functools
import hashlib
import time
import typing as t
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine

from ._time import check_aware, utcnow
from .buckets import BUCKETS, Bucket, UsageBucket, bucket_start, check_bucket
from .schema import (
    MAX_PATH_LENGTH,
    MERGE_KEY_LENGTH,
    UTCDateTime,
    batches_table,
    keys_table,
    rollups_table,
    usage_table,
)
from .usage_records import UsageRecord

_USAGE_COLUMNS = (
    "key_id",
    "occurred_at",
    "method",
    "path",
    "status",
    "remote_addr",
    "requests",
    "merge_key",
)
_ROLLUP_COLUMNS = ("period", "key_id", "start", "status", "requests")
_TIME = UTCDateTime()
#: How long a written batch's id is kept (a retry comes long before).
BATCH_MEMORY = timedelta(days=1)
#: Rows deleted per transaction when pruning, and how much of each roll-up.
PRUNE_BATCH = 5000
_PRUNE_SLICES = {"minute": timedelta(hours=1), "hour": timedelta(days=1), "day": timedelta(days=31)}

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


class _AlreadyWritten(Exception):
    """The batch's id is in the database: it was written before."""


def _upsert(dialect: Dialect, table: sa.Table, columns: tuple[str, ...]) -> sa.Insert:
    """An INSERT of ``columns`` that adds ``requests`` to a row already
    there with the same unique key (and keeps the earliest ``occurred_at``)."""
    values: dict[str, t.Any] = {name: sa.bindparam(name) for name in columns}
    target = table.c
    if dialect.name in ("mysql", "mariadb"):
        mine = mysql.insert(table).values(values)
        new = mine.inserted
        changes: dict[str, t.Any] = {"requests": target.requests + new.requests}
        if "occurred_at" in columns:
            changes["occurred_at"] = sa.func.least(target.occurred_at, new.occurred_at)
        return mine.on_duplicate_key_update(changes)
    dialect_insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    statement = dialect_insert(table).values(values)
    new = statement.excluded
    changes = {"requests": target.requests + new.requests}
    if "occurred_at" in columns:
        # Two-argument min() is SQLite's least().
        least = sa.func.least if dialect.name == "postgresql" else sa.func.min
        changes["occurred_at"] = least(target.occurred_at, new.occurred_at)
        conflict = [target.merge_key]
    else:
        conflict = [target[name] for name in columns[:-1]]
    return statement.on_conflict_do_update(index_elements=conflict, set_=changes)


@functools.cache
def _statement(dialect: Dialect, table_name: str) -> tuple[str, tuple[str, ...] | None]:
    """An upsert in the driver's own SQL, and its parameters' order if it
    takes tuples."""
    table, columns = (
        (usage_table, _USAGE_COLUMNS)
        if table_name == usage_table.name
        else (rollups_table, _ROLLUP_COLUMNS)
    )
    compiled = _upsert(dialect, table, columns).inline().compile(dialect=dialect)
    return compiled.string, tuple(compiled.positiontup or ()) if compiled.positional else None


def _execute(connection: Connection, table: sa.Table, rows: list[dict[str, t.Any]]) -> None:
    # Straight to the driver's executemany: SQLAlchemy's per-row parameter
    # handling would cost more than the rows themselves.
    statement, order = _statement(connection.dialect, table.name)
    connection.exec_driver_sql(
        statement, [tuple(row[name] for name in order) for row in rows] if order else rows
    )


def merge_key(record: UsageRecord) -> str:
    """What makes requests one row: key, minute, method, path, status, address."""
    minute = bucket_start(record.occurred_at, "minute").isoformat()
    parts = (record.key_id, minute, record.method, record.path, str(record.status))
    text = "\x1f".join((*parts, "-" if record.remote_addr is None else "=" + record.remote_addr))
    return hashlib.blake2b(text.encode(), digest_size=MERGE_KEY_LENGTH // 2).hexdigest()


def _cut(record: UsageRecord) -> UsageRecord:
    return record._replace(
        method=record.method[:16],
        path=record.path[:MAX_PATH_LENGTH],
        remote_addr=record.remote_addr and record.remote_addr[:64],
    )


class UsageLog:
    """The usage tables of ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._next_forget = 0.0  # time.monotonic() of the next cleanup of batch ids

    def __repr__(self) -> str:
        return f"UsageLog({self.engine.url.render_as_string(hide_password=True)!r})"

    def record(
        self,
        records: Sequence[UsageRecord],
        *,
        last_used: Mapping[str, datetime] | None = None,
        batch_id: str | None = None,
    ) -> None:
        """Write logged requests in one transaction and move each key's
        ``last_used_at`` forward: to its time in ``last_used`` (the usage
        writer gives the latest accepted request of each key), or without
        it to the latest of its records.

        Identical requests of one minute are added up in one row, and in
        the roll-ups. With ``batch_id``, a batch whose id was written
        before (within :data:`BATCH_MEMORY`) is not written again.
        """
        if not records:
            return
        merged: dict[str, UsageRecord] = {}
        for record in map(_cut, records):
            check_aware("occurred_at", record.occurred_at)
            key = merge_key(record)
            seen = merged.get(key)
            merged[key] = (
                record
                if seen is None
                else seen._replace(
                    occurred_at=min(seen.occurred_at, record.occurred_at),
                    requests=seen.requests + record.requests,
                )
            )
        if last_used is None:
            latest: dict[str, datetime] = {}
            for record in merged.values():
                if record.key_id not in latest or latest[record.key_id] < record.occurred_at:
                    latest[record.key_id] = record.occurred_at
            last_used = latest
        try:
            with self.engine.begin() as connection:
                self._write(connection, merged, last_used, batch_id)
        except _AlreadyWritten:
            return

    def _write(
        self,
        connection: Connection,
        merged: dict[str, UsageRecord],
        last_used: Mapping[str, datetime],
        batch_id: str | None,
    ) -> None:
        dialect = connection.dialect
        to_db: Callable[[t.Any], t.Any] = _TIME.dialect_impl(dialect).bind_processor(dialect) or (
            lambda value: value
        )
        now = utcnow()
        if batch_id is not None:
            try:
                connection.execute(sa.insert(batches_table).values(id=batch_id, written_at=now))
            except exc.IntegrityError:
                raise _AlreadyWritten from None
            if time.monotonic() >= self._next_forget:
                self._next_forget = time.monotonic() + 3600
                connection.execute(
                    sa.delete(batches_table).where(batches_table.c.written_at < now - BATCH_MEMORY)
                )
        # Sorted, so that writers in several processes take row locks in one
        # order and cannot deadlock one another.
        rows = []
        rollups: dict[tuple[str, str, datetime, int], int] = {}
        for key in sorted(merged):
            record = merged[key]
            rows.append(
                {
                    **record._asdict(),
                    "occurred_at": to_db(record.occurred_at),
                    "merge_key": key,
                }
            )
            for period in BUCKETS:
                start = bucket_start(record.occurred_at, period)
                slot = (period, record.key_id, start, record.status)
                rollups[slot] = rollups.get(slot, 0) + record.requests
        _execute(connection, usage_table, rows)
        _execute(
            connection,
            rollups_table,
            [
                {
                    "period": period,
                    "key_id": key_id,
                    "start": to_db(start),
                    "status": status,
                    "requests": requests,
                }
                for (period, key_id, start, status), requests in sorted(rollups.items())
            ],
        )
        if last_used:
            connection.execute(
                _TOUCH_QUERY,
                [{"touch_id": key, "touch_at": last_used[key]} for key in sorted(last_used)],
            )

    def read(
        self, key_id: str, *, since: datetime | None = None, limit: int | None = None
    ) -> list[UsageRecord]:
        """The usage rows of ``key_id``, newest first."""
        since = check_aware("since", since)
        columns = usage_table.c
        query = (
            sa.select(*(columns[name] for name in UsageRecord._fields))
            .where(columns.key_id == key_id)
            .order_by(columns.occurred_at.desc(), columns.id.desc())
        )
        if since is not None:
            query = query.where(columns.occurred_at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [UsageRecord(*row) for row in connection.execute(query)]

    def summary(
        self,
        *,
        key_id: str | None = None,
        owner: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        bucket: Bucket = "hour",
    ) -> list[UsageBucket]:
        """Requests per ``bucket``, oldest first, read from the roll-ups:
        the whole buckets that overlap ``[since, until)``."""
        bucket = check_bucket(bucket)
        since, until = check_aware("since", since), check_aware("until", until)
        columns = rollups_table.c
        query = (
            sa.select(columns.start, columns.status, sa.func.sum(columns.requests))
            .where(columns.period == bucket)
            .group_by(columns.start, columns.status)
            .order_by(columns.start, columns.status)
        )
        if key_id is not None:
            query = query.where(columns.key_id == key_id)
        if owner is not None:
            query = query.where(columns.key_id.in_(self._owned(owner)))
        if since is not None:
            query = query.where(columns.start >= bucket_start(since, bucket))
        if until is not None:
            query = query.where(columns.start < until)
        buckets: list[UsageBucket] = []
        with self.engine.connect() as connection:
            for start, status, requests in connection.execute(query):
                if not buckets or buckets[-1].start != start:
                    buckets.append(UsageBucket(start, 0, {}))
                buckets[-1].by_status[status] = int(requests)
        return [item._replace(requests=sum(item.by_status.values())) for item in buckets]

    def _owned(self, owner: str) -> list[str]:
        """The ids of ``owner``'s keys. Compared again here: MySQL compares
        text regardless of case (``acme`` finds ``ACME``'s keys)."""
        keys = keys_table.c
        query = sa.select(keys.id, keys.owner).where(keys.owner == owner)
        with self.engine.connect() as connection:
            return [key_id for key_id, found in connection.execute(query) if found == owner]

    def top_paths(
        self, key_id: str, *, since: datetime | None = None, limit: int = 10
    ) -> list[tuple[str, int]]:
        """The paths ``key_id`` asked for most, with how many requests."""
        since = check_aware("since", since)
        columns = usage_table.c
        total = sa.func.sum(columns.requests)
        query = (
            sa.select(columns.path, total)
            .where(columns.key_id == key_id)
            .group_by(columns.path)
            .order_by(total.desc(), columns.path)
            .limit(limit)
        )
        if since is not None:
            query = query.where(columns.occurred_at >= since)
        with self.engine.connect() as connection:
            return [(path, int(count)) for path, count in connection.execute(query)]

    def prune(self, before: datetime) -> int:
        """Delete usage from before the UTC day ``before`` falls in, a few
        thousand rows per transaction so that no lock is held for long; the
        rows deleted. Cut at a day, so that rows and every roll-up lose the
        same requests and summaries keep agreeing with the rows."""
        cut = bucket_start(t.cast(datetime, check_aware("before", before)), "day")
        columns = usage_table.c
        deleted = 0
        while True:
            with self.engine.begin() as connection:
                ids = (
                    connection.execute(
                        sa.select(columns.id)
                        .where(columns.occurred_at < cut)
                        .order_by(columns.occurred_at)
                        .limit(PRUNE_BATCH)
                    )
                    .scalars()
                    .all()
                )
                if ids:
                    # What this delete removed: another process may prune too.
                    deleted += connection.execute(
                        sa.delete(usage_table).where(columns.id.in_(ids))
                    ).rowcount
            if len(ids) < PRUNE_BATCH:
                break
        rollups = rollups_table.c
        for period in BUCKETS:
            while True:
                with self.engine.begin() as connection:
                    oldest = connection.execute(
                        sa.select(sa.func.min(rollups.start)).where(
                            rollups.period == period, rollups.start < cut
                        )
                    ).scalar()
                    if oldest is None:
                        break
                    end = min(oldest + _PRUNE_SLICES[period], cut)
                    connection.execute(
                        sa.delete(rollups_table).where(
                            rollups.period == period, rollups.start < end
                        )
                    )
        return deleted
