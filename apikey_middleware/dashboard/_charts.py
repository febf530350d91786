"""Usage charts drawn on the server: counts per bucket, then bars as SVG shapes.

The pages draw these shapes as inline SVG (no script, no network, no inline
style: colours come from the dashboard's stylesheet by status class), so a
chart shows with JavaScript off and passes the Content-Security-Policy.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass
from datetime import datetime

from .._time import utcnow
from ..buckets import STEPS, Bucket, UsageBucket, bucket_start

#: How a bar is split, bottom up: responses by the first digit of their status.
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True)
class Segment:
    """One status class's part of a bar."""

    status_class: str
    y: float
    height: float
    requests: int


@dataclass(frozen=True)
class Bar:
    """One bucket: where it stands, its parts, and a line saying what it holds."""

    x: float
    width: float
    segments: tuple[Segment, ...]
    title: str


@dataclass(frozen=True)
class Chart:
    """A bar chart's shapes in a ``width`` x ``height`` box, and its labels."""

    width: int
    height: int
    bars: tuple[Bar, ...]
    peak: int
    total: int
    by_class: dict[str, int]
    first_label: str
    last_label: str
    summary: str


def _class_of(status: int) -> str:
    return f"{min(max(status // 100, 2), 5)}xx"


def _label(moment: datetime, bucket: Bucket) -> str:
    return moment.strftime("%Y-%m-%d" if bucket == "day" else "%Y-%m-%d %H:%M UTC")


def draw(
    buckets: t.Sequence[UsageBucket],
    *,
    bucket: Bucket,
    count: int,
    width: int,
    height: int,
    until: datetime | None = None,
) -> Chart:
    """Bars for the last ``count`` buckets up to ``until`` (now), empty ones
    included, stacked by status class and scaled to the busiest."""
    step = STEPS[bucket]
    last = bucket_start(until or utcnow(), bucket)
    starts = [last - step * (count - 1 - index) for index in range(count)]
    found = {bucket_start(item.start, bucket): item for item in buckets}
    peak = max((found[s].requests for s in starts if s in found), default=0)
    slot = width / count
    gap = min(2.0, slot / 4)
    bars: list[Bar] = []
    by_class = dict.fromkeys(STATUS_CLASSES, 0)
    for index, start in enumerate(starts):
        item = found.get(start)
        classes = dict.fromkeys(STATUS_CLASSES, 0)
        if item is not None:
            for status, requests in item.by_status.items():
                classes[_class_of(status)] += requests
        segments: list[Segment] = []
        top = float(height)
        for name, requests in classes.items():
            by_class[name] += requests
            if requests and peak:
                size = height * requests / peak
                top -= size
                segments.append(Segment(name, round(top, 2), round(size, 2), requests))
        parts = ", ".join(f"{name} {n}" for name, n in classes.items() if n)
        total = sum(classes.values())
        title = f"{_label(start, bucket)}: {total} request{'s' * (total != 1)}"
        bars.append(
            Bar(
                round(index * slot + gap / 2, 2),
                round(slot - gap, 2),
                tuple(segments),
                f"{title} ({parts})" if parts else title,
            )
        )
    total = sum(by_class.values())
    per = {"minute": "minute", "hour": "hour", "day": "day"}[bucket]
    summary = f"{total} request{'s' * (total != 1)} in the last {count} {per}s" + (
        f": {', '.join(f'{name} {n}' for name, n in by_class.items() if n)}" if total else ""
    )
    return Chart(
        width,
        height,
        tuple(bars),
        peak,
        total,
        by_class,
        _label(starts[0], bucket),
        _label(starts[-1], bucket),
        summary,
    )
