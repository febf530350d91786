"""The scan command: keys in files, and what to do about them."""

from __future__ import annotations

import json
import os

import click

from .. import leaks
from ..scan import Find, Scanner, find_json, find_line, parse_size, printable, stats_line
from ._common import store, store_errors


def _size_option(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _existing_paths(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    # A broken symbolic link exists too (it is counted as unreadable).
    for path in value:
        if not os.path.lexists(path):
            raise click.BadParameter(f"{printable(path)!r} does not exist", ctx, param)
    return value


class _ScanDatabaseError(click.ClickException):
    exit_code = 2


@click.command()
@click.argument("paths", nargs=-1, callback=_existing_paths, metavar="[PATH]...")
@click.option("--offline", is_flag=True, help="Check format and checksum only, no database.")
@click.option("--revoke", "revoke_found", is_flag=True, help="Revoke the active keys found.")
@click.option("--yes", is_flag=True, help="Revoke without asking.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the finds.")
@click.option("--max-size", default="10M", callback=_size_option, show_default=True, metavar="SIZE",
              help="Skip files larger than this (500K, 10M, 1G).")  # fmt: skip
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files and folders so named.")
def scan(
    paths: tuple[str, ...], offline: bool, revoke_found: bool, yes: bool, as_json: bool,
    max_size: int, exclude: tuple[str, ...],
) -> None:  # fmt: skip
    """Find keys in files (folders recursively; skips .git, binary and huge files).

    One line per key found: file, line, column, key id, type and, from the
    database, its state; never the key. Exit status 1 if an active key was
    found (with --offline: any key), else 0; 2 if the database cannot be read.
    """
    if offline and revoke_found:
        raise click.UsageError("--revoke needs the database and cannot go with --offline")
    scanner = Scanner(max_size=max_size, exclude=exclude)
    finds = list(scanner.scan(paths or (".",)))
    checked: list[tuple[Find, str | None, bool]] = [(find, None, False) for find in finds]

    def agree(ids: list[str]) -> bool:
        prompt = f"Revoke {len(ids)} active key(s): {', '.join(ids)}?"
        # "No" still prints where each key was found, and exits 1 for them.
        return yes or click.confirm(prompt, default=False, err=True)

    if finds and not offline:
        try:
            with store_errors():
                found = leaks.check_finds(store(), finds, revoke=agree if revoke_found else None)
                checked = list(found)
        except click.ClickException as error:
            hint = " (--offline checks format and checksum without it)"
            raise _ScanDatabaseError(error.message + hint) from None
    if as_json:
        click.echo(json.dumps([find_json(*item) for item in checked], indent=2))
    else:
        for item in checked:
            click.echo(find_line(*item))
    click.echo(stats_line(len(finds), scanner.stats, max_size), err=True)
    if any(offline or (state and leaks.is_active(state)) for _, state, _ in checked):
        click.get_current_context().exit(1)
