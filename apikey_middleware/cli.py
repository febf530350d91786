"""The command line: ``apikey ...`` and ``flask apikeys ...``.

Both run the same click commands; only where the store comes from differs
(``--database-url`` / ``APIKEY_DATABASE_URL`` for ``apikey``, the app's
extension for ``flask apikeys``). Every failure is one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import json
import re
import typing as t
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta

import click
from sqlalchemy import exc

from .errors import KeyNotFoundError
from .keys import KEY_TYPES, holds_key, redact_keys, shown_safely
from .store import IssuedKey, KeyRecord, SQLAlchemyKeyStore, UsageRecord, utcnow

DEFAULT_DATABASE_URL = "sqlite:///apikeys.db"
_STORE_FACTORY = "apikey_middleware.store_factory"
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_DURATION_RE = re.compile(r"(?:(\d{1,6})([wdhms]))+")
_DURATION_PART_RE = re.compile(r"(\d{1,6})([wdhms])")
_MAX_DURATION = timedelta(days=36_500)
_BAR_WIDTH = 40
_LATEST = 20


def parse_duration(text: str) -> timedelta:
    """``30d``, ``24h``, ``15m``, ``1w``, ``90s``, or several: ``1d12h``; ``0`` is none.

    :raises ValueError: anything else, or more than 100 years.
    """
    text = text.strip()
    if text == "0":
        return timedelta(0)
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(f"{shown_safely(text)} is not a duration such as 30d, 24h, 15m or 1d12h")
    total = timedelta(0)
    for amount, unit in _DURATION_PART_RE.findall(text):
        total += timedelta(**{_UNITS[unit]: int(amount)})
    if total > _MAX_DURATION:
        raise ValueError(f"{shown_safely(text)} is longer than 100 years")
    return total


def _duration_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _shown(text: str | None) -> str:
    """Stored text as it is safe to print: a path or name holding terminal
    escape sequences must not reach the terminal as such."""
    if text is None:
        return "-"
    return _CONTROL_RE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


class _Redacting(click.Group):
    """A group whose usage errors never repeat a key a user pasted by mistake
    (click quotes bad values and unexpected arguments back)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: t.Any,
    ) -> click.Context:
        with _redacted():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> t.Any:
        with _redacted():
            return super().invoke(ctx)


@contextmanager
def _redacted() -> Iterator[None]:
    try:
        yield
    except click.ClickException as error:
        message = error.format_message()
        if not holds_key(message):
            raise
        if isinstance(error, click.UsageError):
            raise click.UsageError(redact_keys(message), error.ctx) from None
        raise click.ClickException(redact_keys(message)) from None


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _state(record: KeyRecord, now: datetime) -> str:
    state = record.state(now)
    if state == "expiring":
        return f"expiring {_when(record.expires_at)}"
    return state


def _record_json(record: KeyRecord, now: datetime) -> dict[str, t.Any]:
    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "id": record.id,
        "prefix": record.prefix,
        "name": record.name,
        "key_type": record.key_type,
        "scopes": list(record.scopes),
        "owner": record.owner,
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "revoked_at": iso(record.revoked_at),
        "last_used_at": iso(record.last_used_at),
        "replaces": record.replaces,
        "state": record.state(now),
    }


def _usage_json(record: UsageRecord) -> dict[str, t.Any]:
    return {
        "key_id": record.key_id,
        "occurred_at": record.occurred_at.isoformat(),
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "remote_addr": record.remote_addr,
    }


@contextmanager
def _store_errors() -> Iterator[None]:
    """Turn the store's failures into one-line click errors (exit 1)."""
    try:
        yield
    except KeyNotFoundError as error:
        raise click.ClickException(str(error)) from None
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    except exc.SQLAlchemyError as error:
        cause = error.orig if isinstance(error, exc.DBAPIError) else error
        detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise click.ClickException(
            f"database error ({detail}); is the database reachable, and set up with 'init-db'?"
        ) from None


def _store() -> SQLAlchemyKeyStore:
    factory = click.get_current_context().meta.get(_STORE_FACTORY)
    if factory is None:  # pragma: no cover - both groups set it
        raise click.ClickException("no key store is configured")
    with _store_errors():
        return t.cast(SQLAlchemyKeyStore, factory())


def _store_command(function: Callable[..., None]) -> Callable[..., None]:
    """Run a command with the store's failures reported as one line."""

    @functools.wraps(function)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> None:
        with _store_errors():
            function(*args, **kwargs)

    return wrapper


def _show_issued(issued: IssuedKey, what: str) -> None:
    record = issued.record
    click.echo(f"{what} {record.key_type} key {record.id} ({_shown(record.name)})")
    click.echo(f"scopes: {' '.join(record.scopes) or '(none)'}")
    if record.expires_at is not None:
        click.echo(f"expires: {_when(record.expires_at)}")
    click.echo(f"\n    {issued.key}\n")
    click.echo(
        click.style("Store this key now: it is shown only once and cannot be recovered.", bold=True)
    )


@click.command("init-db")
@_store_command
def init_db() -> None:
    """Create the key and usage tables (safe to run again)."""
    _store().create_schema()
    click.echo("API key tables are ready.")


@click.command()
@click.option("--name", required=True, help="What the key is for.")
@click.option("--type", "key_type", type=click.Choice(KEY_TYPES), default="test", show_default=True)
@click.option(
    "--scope", "scopes", multiple=True, help="A permission, e.g. clients:read. Repeatable."
)
@click.option("--owner", help="Who the key belongs to.")
@click.option("--expires-in", callback=_duration_option, help="Lifetime, e.g. 30d, 24h, 15m.")
@_store_command
def create(
    name: str,
    key_type: str,
    scopes: tuple[str, ...],
    owner: str | None,
    expires_in: timedelta | None,
) -> None:
    """Create a key and print it, once."""
    expires_at = None if expires_in is None else utcnow() + expires_in
    issued = _store().create_key(
        name, key_type=key_type, scopes=scopes, owner=owner, expires_at=expires_at
    )
    _show_issued(issued, "Created")


@click.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@_store_command
def list_keys(include_revoked: bool, as_json: bool) -> None:
    """List keys: id, prefix, name, type, scopes, created, last used, state."""
    records = _store().list_keys(include_revoked=include_revoked)
    now = utcnow()
    if as_json:
        click.echo(json.dumps([_record_json(record, now) for record in records], indent=2))
        return
    if not records:
        click.echo("No keys." if include_revoked else "No active keys (--all shows revoked ones).")
        return
    header = ("ID", "PREFIX", "NAME", "TYPE", "SCOPES", "CREATED", "LAST USED", "STATE")
    rows = [header] + [
        (
            record.id,
            record.prefix,
            _shown(record.name),
            record.key_type,
            " ".join(record.scopes) or "-",
            _when(record.created_at),
            _when(record.last_used_at),
            _state(record, now),
        )
        for record in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))


def _get(key_id: str) -> KeyRecord:
    record = _store().get_key(key_id)
    if record is None:
        raise KeyNotFoundError(key_id)
    return record


@click.command()
@click.argument("key_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@_store_command
def show(key_id: str, as_json: bool) -> None:
    """Show one key's record."""
    record = _get(key_id)
    now = utcnow()
    if as_json:
        click.echo(json.dumps(_record_json(record, now), indent=2))
        return
    for label, value in (
        ("id", record.id),
        ("prefix", record.prefix),
        ("name", _shown(record.name)),
        ("type", record.key_type),
        ("scopes", " ".join(record.scopes) or "-"),
        ("owner", _shown(record.owner)),
        ("created", _when(record.created_at)),
        ("expires", _when(record.expires_at)),
        ("revoked", _when(record.revoked_at)),
        ("last used", _when(record.last_used_at)),
        ("replaces", record.replaces or "-"),
        ("state", _state(record, now)),
    ):
        click.echo(f"{label + ':':11}{value}")


@click.command()
@click.argument("key_id", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_store_command
def revoke(key_id: str, yes: bool) -> None:
    """Revoke a key: every later request with it is refused."""
    record = _get(key_id)
    if record.revoked_at is not None:
        click.echo(f"Key {record.id} was already revoked at {_when(record.revoked_at)}.")
        return
    if not yes:
        click.confirm(
            f"Revoke {record.key_type} key {record.id} ({_shown(record.name)})?"
            " This cannot be undone",
            abort=True,
        )
    record = _store().revoke(key_id)
    click.echo(f"Revoked key {record.id} ({_shown(record.name)}) at {_when(record.revoked_at)}.")


@click.command()
@click.argument("key_id", metavar="ID")
@click.option(
    "--grace",
    callback=_duration_option,
    default="0",
    show_default=True,
    help="How long the old key keeps working, e.g. 24h; 0 revokes it now.",
)
@_store_command
def rotate(key_id: str, grace: timedelta) -> None:
    """Replace a key with a new one; print the new key, once."""
    issued = _store().rotate(key_id, grace=grace)
    _show_issued(issued, f"Rotated {key_id}: new")
    old = _get(key_id)
    if old.revoked_at is not None:
        click.echo(f"The old key {key_id} is revoked.")
    else:
        click.echo(f"The old key {key_id} keeps working until {_when(old.expires_at)}.")


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
    "--since", callback=_duration_option, help="Only the last 7d, 24h, ... (default: all)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw rows as a JSON array.")
@_store_command
def usage(key_id: str, since: timedelta | None, as_json: bool) -> None:
    """Requests made with a key: per day by status class, then the latest."""
    record = _get(key_id)
    start = None if since is None else utcnow() - since
    rows = _store().usage(record.id, since=start)
    if as_json:
        click.echo(json.dumps([_usage_json(row) for row in rows], indent=2))
        return
    click.echo(f"Usage of {record.key_type} key {record.id} ({_shown(record.name)})")
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
            f"{_when(row.occurred_at)}  {row.status}  {_shown(row.method):7} {_shown(row.path)}"
            f"  {_shown(row.remote_addr)}"
        )


COMMANDS: tuple[click.Command, ...] = (init_db, create, list_keys, show, revoke, rotate, usage)


@click.group(
    cls=_Redacting,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="apikey_middleware", prog_name="apikey")
@click.option(
    "--database-url",
    envvar="APIKEY_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="SQLAlchemy URL of the key database (or APIKEY_DATABASE_URL).",
)
@click.pass_context
def main(ctx: click.Context, database_url: str) -> None:
    """Manage API keys: create, list, revoke, rotate, and read their usage."""

    @functools.cache
    def factory() -> SQLAlchemyKeyStore:
        store = SQLAlchemyKeyStore(database_url)
        ctx.call_on_close(store.close)
        return store

    ctx.meta[_STORE_FACTORY] = factory


for _command in COMMANDS:
    main.add_command(_command)


def flask_group() -> click.Group:
    """The same commands as a Flask ``AppGroup`` on the app's store."""
    from flask import current_app
    from flask.cli import AppGroup, with_appcontext

    def app_store() -> SQLAlchemyKeyStore:
        state = current_app.extensions.get("apikeys")
        if state is None:
            raise click.ClickException("ApiKeys is not set up on this app")
        return t.cast(SQLAlchemyKeyStore, state.store)

    # The commands are shared with ``apikey``, so the app context that
    # AppGroup.command would give each is pushed once, here, for them all.
    @click.pass_context
    @with_appcontext
    def callback(ctx: click.Context) -> None:
        ctx.meta[_STORE_FACTORY] = app_store

    class _RedactingAppGroup(AppGroup, _Redacting):
        pass

    group = _RedactingAppGroup("apikeys", help="Manage the app's API keys.", callback=callback)
    for command in COMMANDS:
        group.add_command(command)
    return group
