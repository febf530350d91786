"""Usage summaries' buckets: a minute, an hour or a day of requests."""

from __future__ import annotations

import typing as t
from datetime import datetime, timedelta

#: The sizes a usage summary can be bucketed by.
Bucket = t.Literal["minute", "hour", "day"]
BUCKETS: tuple[Bucket, ...] = ("minute", "hour", "day")

STEPS: dict[str, timedelta] = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}


class UsageBucket(t.NamedTuple):
    """The requests of one bucket: its first instant (aware UTC), how many,
    and how many per status code."""

    start: datetime
    requests: int
    by_status: dict[int, int]


def check_bucket(bucket: object) -> Bucket:
    """``bucket`` if it names a bucket size; else a ``ValueError``."""
    for name in BUCKETS:
        if bucket == name:
            return name
    raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}, not {bucket!r}")


def bucket_start(moment: datetime, bucket: Bucket) -> datetime:
    """The first instant of the bucket ``moment`` falls in."""
    moment = moment.replace(second=0, microsecond=0)
    if bucket in ("hour", "day"):
        moment = moment.replace(minute=0)
    if bucket == "day":
        moment = moment.replace(hour=0)
    return moment
