"""Commands on keys: init-db, create, list, show, update, revoke, rotate."""

from __future__ import annotations

import json
import os
import shutil
import sys
import typing as t
from collections.abc import Sequence
from datetime import datetime, timedelta

import click
from click.core import ParameterSource

from .. import leaks
from .._issue import successor_of
from .._time import utcnow
from ..errors import AlreadyRotatedError
from ..keys import KEY_TYPES
from ..records import IssuedKey, KeyRecord
from ._common import (
    checked_rate_limit,
    duration_option,
    expiry_option,
    get_record,
    group_path,
    moment_option,
    owner_option,
    rate_limit_option,
    record_json,
    shown,
    store,
    store_command,
    when,
)

# Columns that give way, in this order, when a listing is wider than the
# terminal: first cut down (to their minimum width), then left out.
_SHRINKING = {"NAME": 12, "SCOPES": 12}
_DROPPED = ("CREATED", "RATE LIMIT", "PREFIX", "LAST USED", "TYPE")


def _show_issued(issued: IssuedKey, what: str) -> None:
    record = issued.record
    click.echo(f"{what} {record.key_type} key {record.id} ({shown(record.name)})")
    click.echo(f"scopes: {shown(' '.join(record.scopes)) if record.scopes else '(none)'}")
    if record.expires_at is not None:
        click.echo(f"expires: {when(record.expires_at)}")
    if record.rate_limit is not None:
        click.echo(f"rate limit: {shown(record.rate_limit)}")
    click.echo(f"\n    {issued.key}\n")
    click.echo(
        click.style("Store this key now: it is shown only once and cannot be recovered.", bold=True)
    )


@click.command("init-db")
@store_command
def init_db() -> None:
    """Create the key and usage tables, or bring older ones up to date
    (safe to run again)."""
    store(create=True).create_schema()
    click.echo("API key tables are ready.")
    unchecked = store().keys_without_check_value()
    if unchecked:
        click.echo(
            f"{len(unchecked)} key(s) made by an earlier release have no check value until"
            " their next successful use; until then a flood of wrong secrets for one of them"
            " can refuse it for a minute at a time. Rotate them to fix that now:"
            " apikey rotate ID --grace 24h",
            err=True,
        )


def _expiry(expires_in: timedelta | None, expires_at: datetime | None) -> datetime | None:
    if expires_in is not None and expires_at is not None:
        raise click.UsageError("give --expires-in or --expires-at, not both")
    return utcnow() + expires_in if expires_in is not None else expires_at


_EXPIRES_IN_HELP = "Lifetime from now, e.g. 30d, 24h, 15m (more than 0)."
_EXPIRES_AT_HELP = "End of life, ISO 8601: 2031-12-31 or 2031-12-31T18:00+01:00 (UTC if no offset)."
_RATE_LIMIT_HELP = "Requests allowed, e.g. 100/minute or '10/second;1000/hour' (default: app's)."


@click.command()
@click.option("--name", required=True, help="What the key is for, shown in listings.")
@click.option("--type", "key_type", type=click.Choice(KEY_TYPES), default="test", show_default=True,
              help="test: a key for development; live: a key for production.")  # fmt: skip
@click.option(
    "--scope", "scopes", multiple=True, help="A permission, e.g. clients:read. Repeatable."
)
@click.option("--owner", callback=owner_option, help="Who the key belongs to (an account id).")
@click.option("--expires-in", callback=expiry_option, help=_EXPIRES_IN_HELP)
@click.option("--expires-at", callback=moment_option, help=_EXPIRES_AT_HELP)
@click.option("--rate-limit", callback=rate_limit_option, help=_RATE_LIMIT_HELP)
@store_command
def create(
    name: str,
    key_type: str,
    scopes: tuple[str, ...],
    owner: str | None,
    expires_in: timedelta | None,
    expires_at: datetime | None,
    rate_limit: str | None,
) -> None:
    """Create a key and print it, once."""
    issued = store().create_key(
        name,
        key_type=key_type,
        scopes=scopes,
        owner=owner,
        expires_at=_expiry(expires_in, expires_at),
        rate_limit=rate_limit,
    )
    _show_issued(issued, "Created")
    if not scopes:
        click.echo(
            "Note: no --scope given: this key passes only where no scope is needed"
            " (apikey update ID --scope ... adds some).",
            err=True,
        )


def _fit(header: Sequence[str], rows: list[tuple[str, ...]], width: int) -> list[list[str]]:
    """The table cut to ``width`` columns: long names and scopes shortened
    (ending in "…"), then the least needed columns left out."""
    columns = list(header)
    table = [list(header), *map(list, rows)]

    def widths() -> list[int]:
        return [max(len(row[i]) for row in table) for i in range(len(columns))]

    def total() -> int:
        return sum(widths()) + 2 * (len(columns) - 1)

    for name, least in _SHRINKING.items():
        over = total() - width
        index = columns.index(name)
        room = widths()[index] - max(least, len(name))
        if over > 0 and room > 0:
            cut = widths()[index] - min(over, room)
            for row in table[1:]:
                if len(row[index]) > cut:
                    row[index] = row[index][: cut - 1].rstrip() + "…"
    for name in _DROPPED:
        if total() <= width:
            break
        index = columns.index(name)
        del columns[index]
        for row in table:
            del row[index]
    return table


def _width() -> int | None:
    """The terminal's width (or COLUMNS), if the output goes to one."""
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _list_rows(records: Sequence[KeyRecord], now: datetime) -> list[tuple[str, ...]]:
    return [
        (
            record.id,
            record.prefix,
            shown(record.name),
            record.key_type,
            shown(" ".join(record.scopes)) if record.scopes else "-",
            shown(record.rate_limit),
            when(record.created_at),
            when(record.last_used_at),
            record.state(now),
        )
        for record in records
    ]


@click.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--owner", callback=owner_option, help="Only the keys of this owner.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array of the records, whole (no column is cut).")  # fmt: skip
@store_command
def list_keys(include_revoked: bool, owner: str | None, as_json: bool) -> None:
    """List keys: id, prefix, name, type, scopes, rate limit, created, last
    used, state.

    On a terminal the table fits its width (or COLUMNS): long names and
    scopes are shortened, then columns left out; --json has every field
    whole.
    """
    records = store().list_keys(include_revoked=include_revoked, owner=owner)
    now = utcnow()
    if as_json:
        click.echo(json.dumps([record_json(record, now) for record in records], indent=2))
        return
    if not records:
        click.echo("No keys." if include_revoked else "No active keys (--all shows revoked ones).")
        return
    header = (
        "ID",
        "PREFIX",
        "NAME",
        "TYPE",
        "SCOPES",
        "RATE LIMIT",
        "CREATED",
        "LAST USED",
        "STATE",
    )
    rows = _list_rows(records, now)
    # Cut to a terminal's width, not when the output goes to a file or pipe.
    width = _width()
    table = _fit(header, rows, width) if width else [list(header), *map(list, rows)]
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))


_ID_HELP = "ID is a key id, or the whole key (its id is used; the key is never printed)."
_LATEST_LEAKS = 20


def _leak_count(recorded: int, shown_here: int) -> str:
    if not recorded:
        return "-"
    if shown_here < recorded:
        return f"{recorded} recorded, the latest {shown_here} below (--all for every one)"
    return f"{recorded} recorded"


@click.command(epilog=_ID_HELP)
@click.argument("key_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--all", "all_leaks", is_flag=True, help="Every recorded leak, not the latest 20.")
@store_command
def show(key_id: str, as_json: bool, all_leaks: bool) -> None:
    """Show one key's record and where it was found leaked."""
    record = get_record(key_id)
    found = leaks.leaks_of(store(), record.id, limit=None if all_leaks else _LATEST_LEAKS)
    recorded = len(found) if all_leaks else leaks.count_leaks(store(), record.id)
    now = utcnow()
    if as_json:
        leak_list = [leak.as_json() for leak in found]
        click.echo(json.dumps({**record_json(record, now), "leaks": leak_list}, indent=2))
        return
    for label, value in (
        ("id", record.id),
        ("prefix", record.prefix),
        ("name", shown(record.name)),
        ("type", record.key_type),
        ("scopes", shown(" ".join(record.scopes)) if record.scopes else "-"),
        ("rate limit", shown(record.rate_limit)),
        ("owner", shown(record.owner)),
        ("created", when(record.created_at)),
        ("expires", when(record.expires_at)),
        ("revoked", when(record.revoked_at)),
        ("last used", when(record.last_used_at)),
        ("replaces", record.replaces or "-"),
        ("state", record.state(now)),
        ("leaks", _leak_count(recorded, len(found))),
    ):
        click.echo(f"{label + ':':12}{value}")
    for leak in found:
        where = shown(f"{leak.source} {leak.url}".strip())
        click.echo(f"{'':12}{when(leak.reported_at)}  {leak.action:8} {where}")


@click.command(epilog=_ID_HELP)
@click.argument("key_id", metavar="ID")
@click.option("--name", help="A new name.")
@click.option("--scope", "scopes", multiple=True,
              help="The key's permissions from now on, replacing its own. Repeatable.")  # fmt: skip
@click.option("--expires-in", callback=expiry_option, help=_EXPIRES_IN_HELP)
@click.option("--expires-at", callback=moment_option, help=_EXPIRES_AT_HELP)
@click.option("--no-expiry", is_flag=True, help="Let the key live until it is revoked.")
@click.option(
    "--rate-limit",
    help="Requests allowed, e.g. 100/minute or '10/second;1000/hour'; 'none': the app's default.",
)
@store_command
def update(
    key_id: str,
    name: str | None,
    scopes: tuple[str, ...],
    expires_in: timedelta | None,
    expires_at: datetime | None,
    no_expiry: bool,
    rate_limit: str | None,
) -> None:
    """Change a key's name, scopes, expiry or rate limit; the rest stays as
    it is.

    Holds from the next request, in every process, like a revoke.
    """
    record = get_record(key_id)
    expiry = _expiry(expires_in, expires_at)
    if no_expiry and expiry is not None:
        raise click.UsageError("give --no-expiry or a new expiry, not both")
    changes: dict[str, t.Any] = {}
    if name is not None:
        changes["name"] = name
    if scopes:
        changes["scopes"] = scopes
    if expiry is not None or no_expiry:
        changes["expires_at"] = expiry
    if rate_limit is not None:
        limit = None if rate_limit.strip().lower() == "none" else rate_limit
        changes["rate_limit"] = checked_rate_limit(limit)
    if not changes:
        raise click.UsageError("nothing to change: give --name, --scope, an expiry or --rate-limit")
    record = store().update_key(record.id, **changes)
    click.echo(f"Updated key {record.id} ({shown(record.name)}):")
    click.echo(f"scopes: {shown(' '.join(record.scopes)) if record.scopes else '(none)'}")
    click.echo(f"expires: {when(record.expires_at) if record.expires_at else 'never'}")
    click.echo(f"rate limit: {shown(record.rate_limit) if record.rate_limit else 'the default'}")


@click.command(epilog=_ID_HELP)
@click.argument("key_id", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@store_command
def revoke(key_id: str, yes: bool) -> None:
    """Revoke a key: every later request with it is refused."""
    record = get_record(key_id)
    if record.revoked_at is not None:
        click.echo(f"Key {record.id} was already revoked at {when(record.revoked_at)}.")
        return
    if not yes:
        click.confirm(
            f"Revoke {record.key_type} key {record.id} ({shown(record.name)})?"
            " This cannot be undone",
            abort=True,
        )
    record = store().revoke(record.id)
    click.echo(f"Revoked key {record.id} ({shown(record.name)}) at {when(record.revoked_at)}.")


@click.command(epilog=_ID_HELP)
@click.argument("key_id", metavar="ID")
@click.option(
    "--grace",
    callback=duration_option,
    default="0",
    show_default=True,
    help="How long the old key keeps working, e.g. 24h; 0 revokes it now.",
)
@click.option("--yes", is_flag=True, help="Do not ask, where no --grace was given.")
@click.pass_context
@store_command
def rotate(ctx: click.Context, key_id: str, grace: timedelta, yes: bool) -> None:
    """Replace a key with a new one; print the new key, once.

    The new key has the old one's name, type, scopes, owner and rate limit,
    and as long a lifetime as the old one had, from now. By default
    (--grace 0) the old key stops working at once, so the command asks
    first: give --grace 24h to let clients switch over.
    """
    old = get_record(key_id)
    with store().engine.connect() as connection:
        successor = successor_of(connection, old.id)
    if successor is not None:  # refused before asking anything
        raise AlreadyRotatedError(old.id, successor)
    chose_grace = ctx.get_parameter_source("grace") is not ParameterSource.DEFAULT
    if not (yes or chose_grace) and old.revoked_at is None:
        click.confirm(
            f"Rotate {old.key_type} key {old.id} ({shown(old.name)}) with no grace period?"
            f" The old key stops working at once (to let clients switch over:"
            f" '{group_path()} rotate ID --grace 24h')",
            abort=True,
            err=True,
        )
    issued = store().rotate(old.id, grace=grace)
    _show_issued(issued, f"Rotated {old.id}: new")
    old = get_record(old.id)
    if old.revoked_at is not None:
        click.echo(f"The old key {old.id} is revoked.")
        if yes and not chose_grace:
            click.echo(
                f"Warning: with the default grace of 0 the old key stopped working now;"
                f" to let clients switch over, rotate with a grace period, such as"
                f" '{group_path()} rotate ID --grace 24h'.",
                err=True,
            )
    else:
        click.echo(f"The old key {old.id} keeps working until {when(old.expires_at)}.")
