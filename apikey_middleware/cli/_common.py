"""What every command shares: the store, durations, and text safe to print."""

from __future__ import annotations

import functools
import os
import re
import typing as t
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy import exc

from .._engine import sqlite_file_missing
from ..errors import KeyNotFoundError
from ..keys import PREFIXES, holds_key, key_prefix, parse_key, redact_keys, shown_safely
from ..ratelimit import check_rate_limit
from ..records import KeyRecord
from ..scan import printable
from ..store import SQLAlchemyKeyStore
from ..usage_records import UsageRecord

DEFAULT_DATABASE_URL = "sqlite:///apikeys.db"
STORE_FACTORY = "apikey_middleware.store_factory"
#: Where a subcommand's own ``--database-url`` goes (it wins over the group's).
DATABASE_URL = "apikey_middleware.database_url"
# What the missing-table error of each backend says.
_MISSING_TABLE = ("no such table", "does not exist", "doesn't exist")
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
        if total > _MAX_DURATION:  # before a sum of many parts overflows
            raise ValueError(f"{shown_safely(text)} is longer than 100 years")
    return total


def duration_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def owner_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An owner is text a database can hold: a lone surrogate (bytes a
    shell could not decode) is refused here, not by the driver."""
    if value is not None and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise click.BadParameter("is not valid text", ctx, param) from None
    return value


def rate_limit_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return checked_rate_limit(value, ctx, param)


def checked_rate_limit(
    value: str | None, ctx: click.Context | None = None, param: click.Parameter | None = None
) -> str | None:
    """``value`` as :func:`~apikey_middleware.ratelimit.check_rate_limit`
    gives it back, or a ``BadParameter`` for ``--rate-limit``."""
    try:
        return check_rate_limit("rate limit", value)
    except ValueError as error:
        # Click names the option already.
        message = str(error).removeprefix("rate limit: ")
        raise click.BadParameter(message, ctx, param, param_hint="'--rate-limit'") from None


def shown(text: str | None) -> str:
    """Stored text as it is safe to print: a path or name holding terminal
    escape sequences must not reach the terminal as such."""
    return "-" if text is None else printable(text)


class Redacting(click.Group):
    """A group whose usage errors are one line that never repeats a key a
    user pasted by mistake (click quotes bad values and unexpected
    arguments back)."""

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


class OneLineUsageError(click.UsageError):
    """A usage error told in one line, as every other error is, with the
    command whose help explains it (click's own adds the usage before)."""

    def show(self, file: t.IO[t.Any] | None = None) -> None:
        hint = "" if self.ctx is None else f" (see '{self.ctx.command_path} --help')"
        click.echo(f"Error: {self.format_message()}{hint}", file=file, err=file is None)


@contextmanager
def _redacted() -> Iterator[None]:
    try:
        yield
    except (OneLineUsageError, click.exceptions.NoArgsIsHelpError):
        raise  # told already, or the help asked for by giving nothing
    except click.UsageError as error:
        raise OneLineUsageError(redact_keys(error.format_message()), error.ctx) from None
    except click.ClickException as error:
        message = error.format_message()
        if not holds_key(message):
            raise
        raise click.ClickException(redact_keys(message)) from None


def when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def expiry_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> timedelta | None:
    """A lifetime: a duration longer than none."""
    lifetime = duration_option(ctx, param, value)
    if lifetime is not None and not lifetime:
        raise click.BadParameter("a key must live longer than 0: give 30d, 24h, ...", ctx, param)
    return lifetime


def moment_option(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 date or time (UTC unless it says otherwise), in the future."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{shown_safely(value)} is not a date such as 2031-12-31 or 2031-12-31T18:00+01:00",
            ctx,
            param,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment <= datetime.now(UTC):
        raise click.BadParameter(f"{when(moment)} is not in the future", ctx, param)
    return moment


def database_url_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    if value is not None:
        ctx.meta[DATABASE_URL] = value
    return value


def group_path() -> str:
    """How the user calls this command's group: ``apikey`` or ``flask apikeys``."""
    ctx: click.Context | None = click.get_current_context()
    while ctx is not None and not isinstance(ctx.command, Redacting):
        ctx = ctx.parent
    return "apikey" if ctx is None or ctx.command.name == "apikey" else "flask apikeys"


def key_id_of(text: str) -> str:
    """The key id ``text`` asks for: itself, or the id of the whole key it
    is (the key is never repeated)."""
    parsed = parse_key(text.strip())
    if parsed is not None:
        return parsed.key_id
    if holds_key(text) or any(prefix in text for prefix in PREFIXES.values()):
        raise click.ClickException(
            "that looks like a key but is not a valid one (cut short or mistyped?);"
            " give the whole key or its id (the value is not shown)"
        )
    return text


def record_json(record: KeyRecord, now: datetime) -> dict[str, t.Any]:
    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "id": record.id,
        "prefix": key_prefix(record.key_type, record.id),
        "name": record.name,
        "key_type": record.key_type,
        "scopes": list(record.scopes),
        "owner": record.owner,
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "revoked_at": iso(record.revoked_at),
        "last_used_at": iso(record.last_used_at),
        "replaces": record.replaces,
        "rate_limit": record.rate_limit,
        "state": record.state(now),
    }


def usage_json(record: UsageRecord) -> dict[str, t.Any]:
    return {
        "key_id": record.key_id,
        "occurred_at": record.occurred_at.isoformat(),
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "remote_addr": record.remote_addr,
        "requests": record.requests,
    }


@contextmanager
def store_errors() -> Iterator[None]:
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
        if any(marker in detail for marker in _MISSING_TABLE) and "apikey_" in detail:
            raise click.ClickException(
                f"the API key tables are missing from this database: run '{group_path()} init-db'"
            ) from None
        raise click.ClickException(
            f"database error ({detail}); is the database reachable, and set up with"
            f" '{group_path()} init-db'?"
        ) from None


def store(*, create: bool = False) -> SQLAlchemyKeyStore:
    """The store of the command's database. Only with ``create`` (init-db)
    may a SQLite file be made: any other command reports a missing one."""
    factory = click.get_current_context().meta.get(STORE_FACTORY)
    if factory is None:  # pragma: no cover - both groups set it
        raise click.ClickException("no key store is configured")
    with store_errors():
        key_store = t.cast(SQLAlchemyKeyStore, factory())
    path = key_store.engine.url.database
    if not create and path and sqlite_file_missing(key_store.engine.url):
        raise click.ClickException(
            f"no database at {shown(os.path.abspath(path))}: run '{group_path()} init-db'"
            " to create it, or name the database with --database-url or APIKEY_DATABASE_URL"
        )
    return key_store


def store_command(function: Callable[..., None]) -> Callable[..., None]:
    """Run a command with the store's failures reported as one line."""

    @functools.wraps(function)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> None:
        with store_errors():
            function(*args, **kwargs)

    return wrapper


def get_record(key_id: str) -> KeyRecord:
    """The record of the key ``key_id`` names (an id or a whole key)."""
    key_id = key_id_of(key_id)
    record = store().get_key(key_id)
    if record is None:
        raise KeyNotFoundError(key_id)
    return record
