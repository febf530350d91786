"""The usage command: a key's requests as a chart by status class, its top
paths and latest requests; an owner's keys together; old usage deleted."""

from __future__ import annotations

import json
import typing as t
from collections import Counter
from datetime import datetime, timedelta

import click

from .._time import utcnow
from ..buckets import STEPS, Bucket, UsageBucket, bucket_start
from ._common import (
    duration_option,
    get_record,
    group_path,
    owner_option,
    shown,
    store,
    store_command,
    usage_json,
    when,
)

_WIDTH = 80
_LATEST = 20
#: The newest rows ``--json`` prints by default: a flooded key's whole log
#: would take gigabytes.
_JSON_ROWS = 1000
_TOP_PATHS = 5
#: The range a chart covers when --since is not given (None: all of it).
_DEFAULT_SPAN: dict[str, timedelta | None] = {
    "minute": timedelta(hours=1),
    "hour": timedelta(hours=24),
    "day": None,
}
#: Beyond this many buckets, each run of empty ones is one line of the chart.
_MAX_LINES = 100
_MARKS = {"2xx": "█", "3xx": "▓", "4xx": "▒", "5xx": "░"}
_COLORS = {"2xx": "green", "3xx": "cyan", "4xx": "yellow", "5xx": "red"}
#: The word that makes ``usage`` delete instead of show.
PRUNE = "prune"


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 200 <= status < 600 else "5xx"


def _classes(item: UsageBucket | None) -> Counter[str]:
    counts: Counter[str] = Counter()
    if item is not None:
        for status, requests in item.by_status.items():
            counts[_status_class(status)] += requests
    return counts


def _bar(counts: Counter[str], scale: float) -> tuple[str, int]:
    """The bar, styled, and how many columns it takes."""
    bar, width = "", 0
    for status_class, mark in _MARKS.items():
        if counts[status_class]:
            size = max(1, round(counts[status_class] * scale))
            bar += click.style(mark * size, fg=_COLORS[status_class])
            width += size
    return bar, width


def _label(moment: datetime, by: Bucket) -> str:
    return moment.strftime("%Y-%m-%d" if by == "day" else "%Y-%m-%d %H:%M")


def _starts(buckets: list[UsageBucket], by: Bucket, since: datetime | None) -> list[datetime | int]:
    """Every bucket from the first asked for (or with requests) to now;
    when that is too many lines, those with requests, and between them the
    number of quiet buckets each gap holds."""
    step = STEPS[by]
    first = bucket_start(since, by) if since is not None else buckets[0].start
    last = bucket_start(utcnow(), by)
    if (last - first) / step < _MAX_LINES:
        return [first + step * n for n in range(int((last - first) / step) + 1)]
    lines: list[datetime | int] = []
    expected = first
    for item in buckets:
        quiet = int((item.start - expected) / step)
        if quiet > 0:
            lines.append(quiet)
        lines.append(item.start)
        expected = item.start + step
    quiet = int((last - expected) / step) + 1
    if quiet > 0:
        lines.append(quiet)
    return lines


def _compact(count: int) -> str:
    """A count in at most four characters or so (12k, 3.4M): the chart's
    detail when exact counts would not fit; the total column stays exact."""
    for size, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if count >= size * 0.9995:  # 999 999 is 1.0M, not 1000k
            scaled = count / size
            return f"{scaled:.1f}{suffix}" if scaled < 9.95 else f"{scaled:.0f}{suffix}"
    return str(count)


def draw_chart(buckets: list[UsageBucket], by: Bucket, since: datetime | None) -> list[str]:
    """Lines of a chart of requests per bucket by status class, at most
    80 columns wide."""
    found = {item.start: item for item in buckets}
    rows: list[tuple[str, int, Counter[str]] | int] = []
    for start in _starts(buckets, by, since):
        if isinstance(start, int):
            rows.append(start)
            continue
        counts = _classes(found.get(start))
        rows.append((_label(start, by), sum(counts.values()), counts))
    charted = [row for row in rows if not isinstance(row, int)]
    label_width = len(charted[0][0]) if charted else 10
    total_width = max(len(str(row[1])) for row in charted) if charted else 1
    shortest_bar = len(_MARKS) + 1
    fixed = label_width + total_width + 6
    details = {row[0]: _detail(row[2], str) for row in charted}
    if fixed + shortest_bar + max(map(len, details.values()), default=0) > _WIDTH:
        details = {row[0]: _detail(row[2], _compact) for row in charted}
    detail_width = max(map(len, details.values()), default=0)
    bar_width = max(shortest_bar, min(40, _WIDTH - fixed - detail_width))
    busiest = max((row[1] for row in charted), default=0) or 1
    legend = "  ".join(f"{mark} {name}" for name, mark in _MARKS.items())
    lines = [f"Requests per {by} (UTC)   {legend}"]
    for row in rows:
        if isinstance(row, int):
            quiet = f"{row} quiet {by}{'s' * (row != 1)}"
            lines.append(f"{'…':<{label_width}}  {0:>{total_width}}  ({quiet})")
            continue
        label, total, counts = row
        # Each class is rounded and shown by one mark at least: up to 4 more.
        bar, width = _bar(counts, (bar_width - len(_MARKS)) / busiest)
        line = f"{label}  {total:>{total_width}}  {bar}{' ' * (bar_width - width)}  "
        lines.append((line + details[label]).rstrip())
    return lines


def _detail(counts: Counter[str], number: t.Callable[[int], str]) -> str:
    return "  ".join(f"{name} {number(counts[name])}" for name in _MARKS if counts[name])


def _fit(text: str, room: int) -> str:
    """``text`` cut to ``room`` columns, the cut shown."""
    return text if len(text) <= room else text[: max(0, room - 1)] + "…"


def _fit_middle(text: str, room: int) -> str:
    """``text`` cut to ``room`` columns in its middle: an address keeps its
    network and its host."""
    if len(text) <= room:
        return text
    kept = max(0, room - 1)
    return text[: kept - kept // 2] + "…" + text[len(text) - kept // 2 :]


#: Columns a path, and an address, keep in a latest row when both do not fit.
_PATH_AT_LEAST = 24
_ADDRESS_AT_LEAST = 9


def _latest_line(row: tuple[datetime, int, str, str, str | None, int]) -> str:
    """One row of the latest, in 80 columns: the path cut at its end, the
    address in its middle when both do not fit."""
    at, status, method, path, address, requests = row
    many = f"  ({requests} requests)" if requests > 1 else ""
    head = f"{when(at)}  {status}  {shown(method):7} "
    path, where = shown(path), shown(address)
    room = _WIDTH - len(head) - len(many) - 2
    path_room = max(room - len(where), min(len(path), _PATH_AT_LEAST, room - _ADDRESS_AT_LEAST))
    path = _fit(path, path_room)
    return f"{head}{path}  {_fit_middle(where, room - len(path))}{many}"


@click.command()
@click.argument("key_id", metavar="ID|prune", required=False)
@click.option(
    "--owner",
    callback=owner_option,
    help="Every key of this owner together, instead of one key.",
)
@click.option(
    "--since",
    callback=duration_option,
    help="Only the last 7d, 24h, ... (default: 1h by minute, 24h by hour, all by day).",
)
@click.option(
    "--by",
    type=click.Choice(["minute", "hour", "day"]),
    help="Chart requests per minute, hour or day (UTC; default: day).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: the key's latest rows, or with --by or --owner the buckets.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help=f"With --json and no --by: the newest rows printed, at most (default {_JSON_ROWS}).",
)
@click.option(
    "--older-than",
    callback=duration_option,
    help="With 'prune': delete usage older than this (90d, ...), from the start of its day.",
)
@store_command
def usage(
    key_id: str | None,
    owner: str | None,
    since: timedelta | None,
    by: Bucket | None,
    as_json: bool,
    limit: int | None,
    older_than: timedelta | None,
) -> None:
    """Requests made with a key: a chart by status class, its top paths and
    its latest requests. 'usage prune --older-than 90d' deletes old usage."""
    if key_id == PRUNE:
        if owner is not None or since is not None or by is not None or as_json or limit:
            raise click.UsageError("usage prune takes --older-than only")
        _prune(older_than)
        return
    if older_than is not None:
        raise click.UsageError(f"--older-than goes with '{group_path()} usage prune'")
    if key_id is not None and owner is not None:
        raise click.UsageError("give a key's ID or --owner, not both")
    if limit is not None and (not as_json or by is not None or owner is not None):
        raise click.UsageError(
            "--limit goes with --json, for a key's rows (not with --by or --owner)"
        )
    start = None if since is None else utcnow() - since
    if owner is not None:
        _owner_usage(owner, start, by or "day", as_json)
        return
    if key_id is None:
        raise click.UsageError("give a key's ID, or --owner")
    record = get_record(key_id)
    if as_json and by is None:
        rows = store().usage(record.id, since=start, limit=limit or _JSON_ROWS)
        click.echo(json.dumps([usage_json(row) for row in rows], indent=2))
        return
    by = by or "day"
    start = start if since is not None else _since_default(by)
    buckets = store().usage_summary(key_id=record.id, since=start, bucket=by)
    title = f"Usage of {record.key_type} key {record.id} ({shown(record.name)})"
    if not _chart(title, buckets, by, start, as_json):
        return
    # The chart counts whole buckets: the paths and rows below, the same.
    start = None if start is None else bucket_start(start, by)
    top = store().top_paths(record.id, since=start, limit=_TOP_PATHS)
    click.echo(f"\nTop {len(top)} path{'s' * (len(top) != 1)}")
    width = max((len(str(count)) for _, count in top), default=1)
    for path, count in top:
        click.echo(f"{count:>{width}}  {_fit(shown(path), _WIDTH - width - 2)}")
    rows = store().usage(record.id, since=start, limit=_LATEST)
    requests = sum(item.requests for item in buckets)
    click.echo(
        f"\nLatest {len(rows)} row{'s' * (len(rows) != 1)}"
        " (identical requests of a minute share one)"
    )
    for row in rows:
        click.echo(
            _latest_line(
                (row.occurred_at, row.status, row.method, row.path, row.remote_addr, row.requests)
            )
        )
    click.echo(f"\n{requests} request{'s' * (requests != 1)} in all")


def _since_default(by: Bucket) -> datetime | None:
    span = _DEFAULT_SPAN[by]
    return None if span is None else utcnow() - span


def _chart(
    title: str, buckets: list[UsageBucket], by: Bucket, start: datetime | None, as_json: bool
) -> bool:
    """Print the buckets as JSON, or the title and the chart; whether there
    is more to print after them."""
    if as_json:
        click.echo(json.dumps([_bucket_json(item) for item in buckets], indent=2))
        return False
    click.echo(title)
    if not buckets:
        click.echo("No requests logged" + ("" if start is None else " in that period") + ".")
        return False
    click.echo("")
    for line in draw_chart(buckets, by, start):
        click.echo(line)
    return True


def _bucket_json(item: UsageBucket) -> dict[str, object]:
    return {
        "start": item.start.isoformat(),
        "requests": item.requests,
        "by_status": {str(status): count for status, count in sorted(item.by_status.items())},
    }


def _owner_usage(owner: str, start: datetime | None, by: Bucket, as_json: bool) -> None:
    keys = store().list_keys(include_revoked=True, owner=owner)
    if not keys:
        raise click.ClickException(f"no API key has the owner {_fit(shown(owner), 60)}")
    start = start if start is not None else _since_default(by)
    buckets = store().usage_summary(owner=owner, since=start, bucket=by)
    title = f"Usage of the {len(keys)} key{'s' * (len(keys) != 1)} of {shown(owner)}"
    if not _chart(title, buckets, by, start, as_json):
        return
    click.echo("\nRequests per key")
    for record in keys:
        per_key = store().usage_summary(key_id=record.id, since=start, bucket=by)
        requests = sum(item.requests for item in per_key)
        click.echo(f"{record.id}  {requests:>9}  {record.state():8} {shown(record.name)}")


def _prune(older_than: timedelta | None) -> None:
    if older_than is None:
        raise click.UsageError("usage prune needs --older-than, such as 90d")
    if not older_than:
        raise click.UsageError("--older-than must be longer than 0, such as 90d")
    before = utcnow() - older_than
    deleted = store().prune_usage(before)
    cut = bucket_start(before, "day")
    click.echo(
        f"Deleted {deleted} usage row{'s' * (deleted != 1)} from before {_label(cut, 'day')}."
    )
