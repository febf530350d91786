"""Commands on keys: init-db, create, list, show, update, revoke, rotate."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from .. import leaks
from .._time import utcnow
from ..keys import KEY_TYPES
from ..ratelimit import check_rate_limit
from ..records import IssuedKey
from ._common import (
    duration_option,
    get_record,
    rate_limit_option,
    record_json,
    shown,
    state_text,
    store,
    store_command,
    when,
)


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
    store().create_schema()
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


@click.command()
@click.option("--name", required=True, help="What the key is for.")
@click.option("--type", "key_type", type=click.Choice(KEY_TYPES), default="test", show_default=True)
@click.option(
    "--scope", "scopes", multiple=True, help="A permission, e.g. clients:read. Repeatable."
)
@click.option("--owner", help="Who the key belongs to.")
@click.option("--expires-in", callback=duration_option, help="Lifetime, e.g. 30d, 24h, 15m.")
@click.option(
    "--rate-limit",
    callback=rate_limit_option,
    help="Requests allowed, e.g. 100/minute or '10/second;1000/hour' (default: the app's).",
)
@store_command
def create(
    name: str,
    key_type: str,
    scopes: tuple[str, ...],
    owner: str | None,
    expires_in: timedelta | None,
    rate_limit: str | None,
) -> None:
    """Create a key and print it, once."""
    expires_at = None if expires_in is None else utcnow() + expires_in
    issued = store().create_key(
        name,
        key_type=key_type,
        scopes=scopes,
        owner=owner,
        expires_at=expires_at,
        rate_limit=rate_limit,
    )
    _show_issued(issued, "Created")


@click.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@store_command
def list_keys(include_revoked: bool, as_json: bool) -> None:
    """List keys: id, prefix, name, type, scopes, rate limit, created, last used, state."""
    records = store().list_keys(include_revoked=include_revoked)
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
    rows = [header] + [
        (
            record.id,
            record.prefix,
            shown(record.name),
            record.key_type,
            shown(" ".join(record.scopes)) if record.scopes else "-",
            shown(record.rate_limit),
            when(record.created_at),
            when(record.last_used_at),
            state_text(record, now),
        )
        for record in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))


_LATEST_LEAKS = 20


def _leak_count(recorded: int, shown_here: int) -> str:
    if not recorded:
        return "-"
    if shown_here < recorded:
        return f"{recorded} recorded, the latest {shown_here} below (--all for every one)"
    return f"{recorded} recorded"


@click.command()
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
        ("owner", shown(record.owner)),
        ("limit", shown(record.rate_limit)),
        ("created", when(record.created_at)),
        ("expires", when(record.expires_at)),
        ("revoked", when(record.revoked_at)),
        ("last used", when(record.last_used_at)),
        ("replaces", record.replaces or "-"),
        ("state", state_text(record, now)),
        ("leaks", _leak_count(recorded, len(found))),
    ):
        click.echo(f"{label + ':':11}{value}")
    for leak in found:
        where = shown(f"{leak.source} {leak.url}".strip())
        click.echo(f"{'':11}{when(leak.reported_at)}  {leak.action:8} {where}")


@click.command()
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
    record = store().revoke(key_id)
    click.echo(f"Revoked key {record.id} ({shown(record.name)}) at {when(record.revoked_at)}.")


@click.command()
@click.argument("key_id", metavar="ID")
@click.option(
    "--grace",
    callback=duration_option,
    default="0",
    show_default=True,
    help="How long the old key keeps working, e.g. 24h; 0 revokes it now.",
)
@store_command
def rotate(key_id: str, grace: timedelta) -> None:
    """Replace a key with a new one; print the new key, once."""
    issued = store().rotate(key_id, grace=grace)
    _show_issued(issued, f"Rotated {key_id}: new")
    old = get_record(key_id)
    if old.revoked_at is not None:
        click.echo(f"The old key {key_id} is revoked.")
    else:
        click.echo(f"The old key {key_id} keeps working until {when(old.expires_at)}.")


@click.command()
@click.argument("key_id", metavar="ID")
@click.option(
    "--rate-limit",
    help="Requests allowed, e.g. 100/minute or '10/second;1000/hour'; 'none': the app's default.",
)
@store_command
def update(key_id: str, rate_limit: str | None) -> None:
    """Change a key: from the next request on, in every process."""
    if rate_limit is None:
        raise click.UsageError("nothing to change: give --rate-limit")
    limit = None if rate_limit.strip().lower() == "none" else rate_limit
    try:
        check_rate_limit("rate limit", limit)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--rate-limit'") from None
    record = store().update_key(get_record(key_id).id, rate_limit=limit)
    click.echo(
        f"Updated key {record.id} ({shown(record.name)}): rate limit {shown(record.rate_limit)}."
    )
