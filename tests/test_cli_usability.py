"""The command line a person expects: help everywhere, options where they are
typed, whole keys for ids, tables that fit, no file made by a read."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from flask import Flask

from apikey_middleware import SQLAlchemyKeyStore
from apikey_middleware.cli import COMMANDS, main
from apikey_middleware.flask import ApiKeys

from .conftest import TEST_ROUNDS


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def store(url: str) -> SQLAlchemyKeyStore:
    key_store = SQLAlchemyKeyStore(url, bcrypt_rounds=TEST_ROUNDS)
    key_store.create_schema()
    return key_store


def run(url: str, *args: str, **env: str) -> Result:
    return CliRunner(env=env or None).invoke(main, ["--database-url", url, *args])


def one_line_error(result: Result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.output
    # One line, usage errors too (click's own add the usage and a hint).
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("Error: ")


def every_command() -> list[click.Command]:
    found: list[click.Command] = []
    for command in COMMANDS:
        found.append(command)
        if isinstance(command, click.Group):
            found.extend(command.commands.values())
    return found


@pytest.mark.parametrize("command", every_command(), ids=lambda command: command.name)
def test_every_option_has_help(command: click.Command) -> None:
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{command.name} {param.opts} has no help"


def test_version_and_short_help() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert re.fullmatch(r"apikey, version \d+\.\d+\.\d+\S*\n", result.output)
    assert CliRunner().invoke(main, ["create", "-h"]).exit_code == 0
    assert "live: a key for production" in CliRunner().invoke(main, ["create", "-h"]).output


def flask_app(url: str) -> Flask:
    app = Flask(__name__)
    app.config.update(APIKEY_DATABASE_URL=url, APIKEY_BCRYPT_ROUNDS=TEST_ROUNDS)
    ApiKeys(app)
    return app


def test_no_command_shows_the_help_not_an_error(url: str) -> None:
    for result in (
        CliRunner().invoke(main, []),
        flask_app(url).test_cli_runner().invoke(args=["apikeys"]),
    ):
        assert "Usage:" in result.output
        assert "Error" not in result.output
        assert "create" in result.output


def test_flask_apikeys_takes_dash_h_like_apikey(url: str) -> None:
    runner = flask_app(url).test_cli_runner()
    for args in (["apikeys", "-h"], ["apikeys", "list", "-h"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


def test_database_url_is_taken_after_the_command_too(
    url: str, store: SQLAlchemyKeyStore, tmp_path: Path
) -> None:
    issued = store.create_key("after")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    # The command's own option wins over the group's (and over the environment).
    result = CliRunner().invoke(main, ["--database-url", other, "list", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert issued.id in result.stdout
    result = CliRunner(env={"APIKEY_DATABASE_URL": other}).invoke(
        main, ["show", issued.id, "--database-url", url]
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "other.db").exists()


def test_flask_apikeys_refuses_a_database_url_of_its_own(url: str, tmp_path: Path) -> None:
    runner = flask_app(url).test_cli_runner()
    result = runner.invoke(args=["apikeys", "list", "--database-url", f"sqlite:///{tmp_path}/x"])
    assert result.exit_code == 2
    assert "app's database" in result.output


@pytest.mark.parametrize("command", ["show", "usage", "revoke", "rotate", "update"])
def test_a_whole_key_is_taken_for_its_id_and_never_printed(
    url: str, store: SQLAlchemyKeyStore, command: str
) -> None:
    issued = store.create_key("whole", scopes=["a:b"])
    extra = {"revoke": ["--yes"], "rotate": ["--yes"], "update": ["--name", "renamed"]}.get(
        command, []
    )
    result = run(url, command, issued.key, *extra)
    assert result.exit_code == 0, result.output
    assert issued.key not in result.output
    assert issued.id in result.output


def test_list_filters_by_owner(url: str, store: SQLAlchemyKeyStore) -> None:
    mine = store.create_key("mine", owner="acme")
    store.create_key("theirs", owner="other")
    listed = json.loads(run(url, "list", "--owner", "acme", "--json").stdout)
    assert [row["id"] for row in listed] == [mine.id]


def test_list_fits_the_terminal_and_json_holds_everything_whole(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    long_name = "a key for the nightly billing export of every region " * 2
    scopes = [f"clients:{verb}" for verb in ("read", "write", "delete", "export", "audit")]
    issued = store.create_key(long_name.strip(), scopes=scopes)
    for width in (120, 80, 60):
        result = run(url, "list", COLUMNS=str(width))
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        assert all(len(line) <= width for line in lines), (width, lines)
        assert issued.id in lines[1]
        assert lines[1].endswith("active")
    assert "…" in run(url, "list", COLUMNS="80").stdout
    assert " …" not in run(url, "list", COLUMNS="80").stdout  # cut at a word's end
    # Written to a file or a pipe (no terminal, no COLUMNS): nothing is cut.
    assert long_name.strip() in run(url, "list").stdout
    (row,) = json.loads(run(url, "list", "--json", COLUMNS="60").stdout)
    assert row["name"] == long_name.strip()
    assert row["scopes"] == sorted(scopes)
    assert row["prefix"] == f"sk_test_{issued.id[:4]}"


def test_update_changes_what_is_given_only(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key(
        "before", scopes=["a:read"], owner="acme", expires_at=timedelta(days=3)
    )
    result = run(url, "update", issued.id, "--scope", "a:read", "--scope", "a:write")
    assert result.exit_code == 0, result.output
    record = store.get_key(issued.id)
    assert record is not None
    assert (record.name, record.scopes, record.owner) == ("before", ("a:read", "a:write"), "acme")
    assert record.expires_at == issued.record.expires_at
    assert run(url, "update", issued.id, "--name", "after", "--expires-in", "30d").exit_code == 0
    record = store.get_key(issued.id)
    assert record is not None
    assert record.name == "after"
    assert record.expires_at is not None
    assert timedelta(days=29) < record.expires_at - datetime.now(UTC) <= timedelta(days=30)
    assert run(url, "update", issued.id, "--no-expiry").exit_code == 0
    assert store.get_key(issued.id).expires_at is None  # type: ignore[union-attr]
    one_line_error(run(url, "update", issued.id), 2, "nothing to change")
    store.revoke(issued.id)
    one_line_error(run(url, "update", issued.id, "--name", "x"), 1, "revoked")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--expires-in", "0s"], id="zero"),
        pytest.param(["--expires-in", "0"], id="zero-bare"),
        pytest.param(["--expires-at", "2001-01-01"], id="past"),
        pytest.param(["--expires-at", "soon"], id="not-a-date"),
        pytest.param(["--expires-in", "1d", "--expires-at", "2999-01-01"], id="both"),
    ],
)
def test_an_expiry_not_in_the_future_is_refused(
    url: str, store: SQLAlchemyKeyStore, args: list[str]
) -> None:
    result = run(url, "create", "--name", "n", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert store.list_keys(include_revoked=True) == []


def test_expires_at_takes_an_iso_date(url: str, store: SQLAlchemyKeyStore) -> None:
    result = run(url, "create", "--name", "n", "--expires-at", "2999-12-31T18:00+01:00")
    assert result.exit_code == 0, result.output
    (record,) = store.list_keys()
    assert record.expires_at == datetime(2999, 12, 31, 17, 0, tzinfo=UTC)


def test_rotate_warns_that_the_default_grace_revokes_the_old_key_at_once(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    first = store.create_key("n")
    result = run(url, "rotate", first.id, "--yes")
    assert result.exit_code == 0
    assert "--grace 24h" in result.stderr
    assert "stopped working now" in result.stderr
    second = store.list_keys()[0]
    for grace in ("0", "24h"):
        result = run(url, "rotate", second.id, "--grace", grace)
        assert result.exit_code == 0
        assert "Warning" not in result.stderr
        second = store.list_keys()[-1]


@pytest.mark.parametrize(
    "args",
    [["list"], ["show", "a1b2c3d4e5f6g7"], ["create", "--name", "n"], ["usage", "a1b2c3d4e5f6g7"]],
    ids=lambda args: args[0],
)
def test_a_missing_database_file_is_reported_and_not_created(
    tmp_path: Path, args: list[str]
) -> None:
    path = tmp_path / "missing.db"
    result = run(f"sqlite:///{path}", *args)
    one_line_error(result, 1, "init-db")
    assert "no database at" in result.stderr
    assert not path.exists()


def test_a_database_without_tables_says_to_run_init_db(url: str, tmp_path: Path) -> None:
    SQLAlchemyKeyStore(url).engine.connect().close()  # the file, no tables
    one_line_error(
        run(url, "list"), 1, "tables are missing from this database: run 'apikey init-db'"
    )
    runner = flask_app(url).test_cli_runner()
    result = runner.invoke(args=["apikeys", "list"])
    assert result.exit_code == 1
    assert "run 'flask apikeys init-db'" in result.output


def test_init_db_creates_the_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "new.db"
    path.parent.mkdir()
    assert run(f"sqlite:///{path}", "init-db").exit_code == 0
    assert path.exists()
    assert run(f"sqlite:///{path}", "list").exit_code == 0


A_KEY = "sk_live_" + "a1b2c3d4e5f6g7" + "_" + "Q" * 34


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["create", "--name", "x", "--expires-at", A_KEY], id="expires-at"),
        pytest.param(["update", A_KEY, "--name", "x"], id="update-id"),
        pytest.param(["update", "a1b2c3d4e5f6g7", "--name", A_KEY], id="update-name"),
        pytest.param(["list", "--owner", A_KEY], id="owner-filter"),
        pytest.param(["list", "--database-url", A_KEY], id="database-url"),
    ],
)
def test_a_key_pasted_into_a_new_option_is_never_echoed(
    url: str, store: SQLAlchemyKeyStore, args: list[str]
) -> None:
    result = run(url, *args)
    assert A_KEY not in result.output
    assert "a1b2c3d4e5f6g7_QQQ" not in result.output
    assert "Traceback" not in result.output
