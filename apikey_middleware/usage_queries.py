"""The store's methods for its usage log: what a key was used for, summed
up, and pruned.

:class:`~apikey_middleware.store.SQLAlchemyKeyStore` has them; they hand the
work to its :class:`~apikey_middleware.usage_log.UsageLog`, where the SQL is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from ._engine import SharedConnectionPool
from ._time import moment
from .buckets import Bucket, UsageBucket
from .usage_log import UsageLog
from .usage_records import UsageRecord


class UsageQueries:
    """Usage methods of :class:`~apikey_middleware.store.SQLAlchemyKeyStore`."""

    # What the store sets; annotated here (importable at run time, so that
    # the store's own annotations still evaluate for the docs).
    engine: Engine
    _usage: UsageLog
    _closed: bool

    def record_usage(
        self,
        records: Sequence[UsageRecord],
        *,
        last_used: Mapping[str, datetime] | None = None,
        batch_id: str | None = None,
    ) -> None:
        """Write logged requests in one transaction, identical ones of a
        minute in one row, and move each key's ``last_used_at`` forward (see
        :meth:`~apikey_middleware.usage_log.UsageLog.record`)."""
        if self._closed and isinstance(self.engine.pool, SharedConnectionPool):
            return  # an in-memory database closed: gone with its rows' keys
        self._usage.record(records, last_used=last_used, batch_id=batch_id)

    def usage(
        self,
        key_id: str,
        *,
        since: datetime | timedelta | None = None,
        limit: int | None = None,
    ) -> list[UsageRecord]:
        """The usage rows of ``key_id``, newest first; a row stands for
        ``requests`` identical requests of one minute.

        :param since: only rows at or after this aware datetime, or in
            this last timedelta.
        :param limit: at most this many rows.
        """
        return self._usage.read(key_id, since=moment("since", since), limit=limit)

    def usage_summary(
        self,
        *,
        key_id: str | None = None,
        owner: str | None = None,
        since: datetime | timedelta | None = None,
        until: datetime | timedelta | None = None,
        bucket: Bucket = "hour",
    ) -> list[UsageBucket]:
        """Requests per minute, hour or day, with their status codes, oldest
        first: one :class:`~apikey_middleware.buckets.UsageBucket` per bucket
        with requests. Read from roll-ups the usage writer keeps, so its cost
        follows the buckets, not the requests.

        :param key_id: one key's requests; ``owner``: those of an owner's
            keys; neither: every key's.
        :param since: from the bucket this time falls in (an aware
            datetime, or a timedelta back from now).
        :param until: buckets that start before this time.
        :param bucket: ``"minute"``, ``"hour"`` or ``"day"`` (UTC).
        """
        return self._usage.summary(
            key_id=key_id,
            owner=owner,
            since=moment("since", since),
            until=moment("until", until),
            bucket=bucket,
        )

    def top_paths(
        self, key_id: str, *, since: datetime | timedelta | None = None, limit: int = 10
    ) -> list[tuple[str, int]]:
        """The paths ``key_id`` asked for most (``since`` then), each with
        how many requests, most first."""
        return self._usage.top_paths(key_id, since=moment("since", since), limit=limit)

    def prune_usage(self, before: datetime | timedelta) -> int:
        """Delete usage older than ``before`` (an aware datetime, or a
        timedelta back from now), a few thousand rows per transaction so
        that authentication is never kept waiting; the rows deleted. The
        cut is at the start of ``before``'s UTC day, so that summaries keep
        agreeing with the rows."""
        when = moment("before", before)
        if when is None:
            raise ValueError("before must be a timezone-aware datetime or a timedelta")
        return self._usage.prune(when)
