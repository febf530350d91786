"""The command line: ``apikey ...`` and ``flask apikeys ...``.

Both run the same click commands; only where the store comes from differs
(``--database-url`` / ``APIKEY_DATABASE_URL`` for ``apikey``, the app's
extension for ``flask apikeys``). Every failure is one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

from ..store import SQLAlchemyKeyStore
from ._common import DEFAULT_DATABASE_URL, STORE_FACTORY, Redacting
from ._common import parse_duration as parse_duration
from .keys import create, init_db, list_keys, revoke, rotate, show, update
from .scan import scan
from .usage import usage

__all__ = ["COMMANDS", "DEFAULT_DATABASE_URL", "flask_group", "main"]

COMMANDS: tuple[click.Command, ...] = (
    init_db,
    create,
    list_keys,
    show,
    update,
    revoke,
    rotate,
    usage,
    scan,
)


@click.group(
    cls=Redacting,
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

    ctx.meta[STORE_FACTORY] = factory


for _command in COMMANDS:
    main.add_command(_command)


def flask_group(app_store: Callable[[], SQLAlchemyKeyStore]) -> click.Group:
    """The same commands as a Flask ``AppGroup``, on the store ``app_store``
    returns (called inside the app context)."""
    from flask.cli import AppGroup, with_appcontext

    # The commands are shared with ``apikey``, so the app context that
    # AppGroup.command would give each is pushed once, here, for them all.
    @click.pass_context
    @with_appcontext
    def callback(ctx: click.Context) -> None:
        ctx.meta[STORE_FACTORY] = app_store

    class RedactingAppGroup(AppGroup, Redacting):
        pass

    group = RedactingAppGroup("apikeys", help="Manage the app's API keys.", callback=callback)
    for command in COMMANDS:
        group.add_command(command)
    return group
