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
from ._common import DATABASE_URL, DEFAULT_DATABASE_URL, STORE_FACTORY, Redacting
from ._common import database_url_option as database_url_option
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


_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Each subcommand takes --database-url too, after its name: `apikey list
# --database-url URL` works as `apikey --database-url URL list` does.
for _command in COMMANDS:
    _command.params.append(
        click.Option(
            ["--database-url"],
            callback=database_url_option,
            expose_value=False,
            is_eager=True,
            help="SQLAlchemy URL of the key database; also accepted before the command.",
        )
    )


@click.group("apikey", cls=Redacting, context_settings=_CONTEXT)
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
    """Manage API keys: create, list, update, revoke, rotate, and read their usage."""

    @functools.cache
    def factory() -> SQLAlchemyKeyStore:
        store = SQLAlchemyKeyStore(ctx.meta.get(DATABASE_URL) or database_url)
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
        def factory() -> SQLAlchemyKeyStore:
            if ctx.meta.get(DATABASE_URL):
                raise click.UsageError(
                    "flask apikeys uses the app's database (APIKEY_DATABASE_URL in its"
                    " config): leave out --database-url, or use apikey --database-url"
                )
            return app_store()

        ctx.meta[STORE_FACTORY] = factory

    class RedactingAppGroup(AppGroup, Redacting):
        pass

    group = RedactingAppGroup(
        "apikeys", help="Manage the app's API keys.", callback=callback, context_settings=_CONTEXT
    )
    for command in COMMANDS:
        group.add_command(command)
    return group
