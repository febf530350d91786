"""The usage command: a key's requests as a chart, then the latest."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta

import click

from .._time import utcnow
from ._common import duration_option, get_record, shown, store, store_command, usage_json, when

_BAR_WIDTH = 40
_LATEST = 20


def _bar(counts: Counter[str], scale: float) -> str:
    marks = {"2xx": "█", "3xx": "▓", "4xx": "▒", "5xx": "░"}
    colors = {"2xx": "green", "3xx": "cyan", "4xx": "yellow", "5xx": "red"}
    bar = ""
    for status_class, mark in marks.items():
        if counts[status_class]:
            width = max(1, round(counts[status_class] * scale))
            bar += click.style(mark * width, fg=colors[status_class])
    return bar


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 200 <= status < 600 else "5xx"


@click.command()
@click.argument("key_id", metavar="ID")
@click.option(
    "--since", callback=duration_option, help="Only the last 7d, 24h, ... (default: all)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw rows as a JSON array.")
@store_command
def usage(key_id: str, since: timedelta | None, as_json: bool) -> None:
    """Requests made with a key: per day by status class, then the latest."""
    record = get_record(key_id)
    start = None if since is None else utcnow() - since
    rows = store().usage(record.id, since=start)
    if as_json:
        click.echo(json.dumps([usage_json(row) for row in rows], indent=2))
        return
    click.echo(f"Usage of {record.key_type} key {record.id} ({shown(record.name)})")
    if not rows:
        click.echo("No requests logged" + ("" if since is None else " in that period") + ".")
        return
    days: dict[date, Counter[str]] = {}
    for row in rows:
        days.setdefault(row.occurred_at.date(), Counter())[_status_class(row.status)] += 1
    busiest = max(sum(counts.values()) for counts in days.values())
    scale = _BAR_WIDTH / busiest
    click.echo("\nRequests per day (UTC)   █ 2xx  ▓ 3xx  ▒ 4xx  ░ 5xx")
    for day in sorted(days):
        counts = days[day]
        detail = "  ".join(f"{name} {counts[name]}" for name in sorted(counts))
        click.echo(f"{day}  {sum(counts.values()):6}  {_bar(counts, scale)}  {detail}")
    click.echo(f"\nLatest {min(len(rows), _LATEST)} of {len(rows)} requests")
    for row in rows[:_LATEST]:
        click.echo(
            f"{when(row.occurred_at)}  {row.status}  {shown(row.method):7} {shown(row.path)}"
            f"  {shown(row.remote_addr)}"
        )
