"""The ``apikey`` and ``flask apikeys`` commands: each success and failure path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from flask import Flask

from apikey_middleware import SQLAlchemyKeyStore
from apikey_middleware.cli import main, parse_duration
from apikey_middleware.flask import ApiKeys
from apikey_middleware.keys import parse_key
from apikey_middleware.usage import UsageRecord

from .conftest import TEST_ROUNDS

KEY_RE = re.compile(r"sk_(?:test|live)_[A-Za-z0-9_]+")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def store(url: str) -> SQLAlchemyKeyStore:
    key_store = SQLAlchemyKeyStore(url, bcrypt_rounds=TEST_ROUNDS)
    key_store.create_schema()
    return key_store


def run(url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, *args], input=input)


def assert_one_line_error(result: Result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert text in result.stderr
    assert "Traceback" not in result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1


def created_key(result: Result) -> str:
    keys = KEY_RE.findall(result.stdout)
    assert len(keys) == 1, result.stdout
    return str(keys[0])


def test_init_db_creates_the_tables_and_can_run_again(url: str) -> None:
    assert run(url, "init-db").exit_code == 0
    result = run(url, "init-db")
    assert result.exit_code == 0
    assert "ready" in result.stdout
    assert SQLAlchemyKeyStore(url).list_keys() == []


def test_create_prints_the_key_once_with_its_id_and_a_warning(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    result = run(
        url, "create", "--name", "billing", "--type", "live",
        "--scope", "clients:read", "--scope", "clients:write", "--owner", "acme",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    key = created_key(result)
    parsed = parse_key(key)
    assert parsed is not None
    assert parsed.key_type == "live"
    assert result.stdout.count(key) == 1
    assert parsed.key_id in result.stdout
    assert "shown only once" in result.stdout
    record = store.get_key(parsed.key_id)
    assert record is not None
    assert (record.name, record.scopes, record.owner) == (
        "billing",
        ("clients:read", "clients:write"),
        "acme",
    )
    assert store.authenticate(parsed).key_id == parsed.key_id


def test_create_without_a_scope_says_what_that_key_can_reach(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    result = run(url, "create", "--name", "bare")
    assert result.exit_code == 0, result.output
    assert "no --scope given" in result.stderr
    assert "no --scope" not in run(url, "create", "--name", "b", "--scope", "x:y").stderr


def test_create_with_expiry(url: str, store: SQLAlchemyKeyStore) -> None:
    result = run(url, "create", "--name", "n", "--expires-in", "30d")
    parsed = parse_key(created_key(result))
    assert parsed is not None
    record = store.get_key(parsed.key_id)
    assert record is not None
    assert record.expires_at is not None
    left = record.expires_at - datetime.now(UTC)
    assert timedelta(days=29, hours=23) < left <= timedelta(days=30)
    assert "expires:" in result.stdout


@pytest.mark.parametrize(
    ("args", "text"),
    [
        pytest.param(["--expires-in", "30x"], "not a duration", id="bad-duration"),
        pytest.param(["--expires-in", "-5d"], "not a duration", id="negative-duration"),
        pytest.param(["--expires-in", "999999w"], "longer than 100 years", id="huge-duration"),
        pytest.param(
            ["--expires-in", "999999w" * 143], "longer than 100 years", id="overflowing-sum"
        ),
        pytest.param(["--type", "prod"], "'prod' is not one of", id="bad-type"),
    ],
)
def test_create_usage_errors_exit_2_and_change_nothing(
    url: str, store: SQLAlchemyKeyStore, args: list[str], text: str
) -> None:
    result = run(url, "create", "--name", "n", *args)
    assert_one_line_error(result, 2, text)
    assert store.list_keys(include_revoked=True) == []


@pytest.mark.parametrize(
    ("args", "text"),
    [
        pytest.param(["--scope", "two words"], "invalid scope", id="bad-scope"),
        pytest.param(["--owner", ""], "owner", id="empty-owner"),
    ],
)
def test_create_bad_values_exit_1_and_change_nothing(
    url: str, store: SQLAlchemyKeyStore, args: list[str], text: str
) -> None:
    result = run(url, "create", "--name", "n", *args)
    assert_one_line_error(result, 1, text)
    assert store.list_keys(include_revoked=True) == []


def test_create_needs_a_name(url: str, store: SQLAlchemyKeyStore) -> None:
    assert_one_line_error(run(url, "create"), 2, "--name")


def test_list_shows_one_line_per_key_with_its_state(url: str, store: SQLAlchemyKeyStore) -> None:
    active = store.create_key("active one", scopes=["clients:read"])
    expiring = store.create_key("expiring", expires_at=datetime.now(UTC) + timedelta(days=2))
    revoked = store.create_key("revoked")
    store.revoke(revoked.id)
    result = run(url, "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "PREFIX", "NAME", "TYPE", "SCOPES", "RATE", "LIMIT", "CREATED", "LAST", "USED",
        "STATE",
    ]  # fmt: skip
    assert len(lines) == 3
    assert active.id in lines[1]
    assert active.record.prefix in lines[1]
    assert "clients:read" in lines[1]
    assert lines[1].endswith("active")
    assert expiring.id in lines[2]
    assert lines[2].endswith("active")  # a key with an end date is active until then
    assert {line.split()[-1] for line in lines[1:]} == {"active"}
    assert revoked.id not in result.stdout
    everything = run(url, "list", "--all")
    assert revoked.id in everything.stdout
    assert everything.stdout.splitlines()[-1].endswith("revoked")


def test_list_json_gives_the_record_fields(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n", key_type="live", scopes=["a", "b"])
    result = run(url, "list", "--json")
    assert result.exit_code == 0
    (row,) = json.loads(result.stdout)
    assert row["id"] == issued.id
    assert row["key_type"] == "live"
    assert row["scopes"] == ["a", "b"]
    assert row["state"] == "active"
    assert row["prefix"] == issued.record.prefix.removesuffix("…")  # no display ellipsis
    assert "…" not in result.stdout
    assert "\\u2026" not in result.stdout
    assert datetime.fromisoformat(row["created_at"]) == issued.record.created_at
    assert issued.key not in result.stdout


def test_show_prints_one_record(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n", owner="acme")
    result = run(url, "show", issued.id)
    assert result.exit_code == 0
    assert f"id:         {issued.id}" in result.stdout
    assert "owner:      acme" in result.stdout
    assert json.loads(run(url, "show", issued.id, "--json").stdout)["name"] == "n"


@pytest.mark.parametrize("command", ["show", "revoke", "rotate", "usage"])
def test_unknown_id_is_a_one_line_error(url: str, store: SQLAlchemyKeyStore, command: str) -> None:
    extra = {"revoke": ["--yes"], "rotate": ["--grace", "1h"]}.get(command, [])
    result = run(url, command, "nosuchkey00000", *extra)
    assert_one_line_error(result, 1, "no API key with id 'nosuchkey00000'")


def test_a_whole_key_names_its_id_and_is_never_echoed(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    result = run(url, "show", issued.key)
    assert result.exit_code == 0, result.output
    assert f"id:         {issued.id}" in result.stdout
    assert issued.key not in result.output


def test_a_mistyped_key_for_an_id_is_refused_without_echo(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    issued = store.create_key("n")
    mistyped = issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")
    for command in (["show", mistyped], ["revoke", mistyped, "--yes"], ["rotate", mistyped]):
        result = run(url, *command)
        assert_one_line_error(result, 1, "not a valid one")
        assert mistyped not in result.output
        assert issued.key not in result.output
    assert store.get_key(issued.id).revoked_at is None  # type: ignore[union-attr]


def test_revoke_asks_first(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    refused = run(url, "revoke", issued.id, input="n\n")
    assert refused.exit_code == 1
    assert store.get_key(issued.id).revoked_at is None  # type: ignore[union-attr]
    accepted = run(url, "revoke", issued.id, input="y\n")
    assert accepted.exit_code == 0
    assert "Revoked" in accepted.stdout
    assert store.get_key(issued.id).revoked_at is not None  # type: ignore[union-attr]


def test_revoke_yes_skips_the_question_and_the_key_fails_at_once(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    issued = store.create_key("n")
    parsed = parse_key(issued.key)
    assert parsed is not None
    store.authenticate(parsed)
    result = run(url, "revoke", issued.id, "--yes")
    assert result.exit_code == 0
    from apikey_middleware import InvalidKeyError

    with pytest.raises(InvalidKeyError):
        store.authenticate(parsed)
    assert "already revoked" in run(url, "revoke", issued.id, "--yes").stdout


def test_revoke_without_input_aborts(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    result = run(url, "revoke", issued.id)
    assert result.exit_code == 1
    assert store.get_key(issued.id).revoked_at is None  # type: ignore[union-attr]


def test_rotate_with_grace_prints_the_new_key_and_both_work(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    old = store.create_key("n", scopes=["clients:read"])
    result = run(url, "rotate", old.id, "--grace", "24h")
    assert result.exit_code == 0, result.output
    new = parse_key(created_key(result))
    old_parsed = parse_key(old.key)
    assert new is not None
    assert old_parsed is not None
    assert store.authenticate(new).scopes == {"clients:read"}
    assert store.authenticate(old_parsed).key_id == old.id
    assert "keeps working until" in result.stdout
    assert store.get_key(new.key_id).replaces == old.id  # type: ignore[union-attr]


def test_rotate_without_grace_revokes_the_old_key(url: str, store: SQLAlchemyKeyStore) -> None:
    old = store.create_key("n")
    result = run(url, "rotate", old.id, input="n\n")
    assert result.exit_code == 1, "asked first, and no changes nothing"
    assert "with no grace period?" in result.stderr
    assert store.get_key(old.id).revoked_at is None  # type: ignore[union-attr]
    result = run(url, "rotate", old.id, input="y\n")
    assert result.exit_code == 0
    assert "is revoked" in result.stdout
    assert store.get_key(old.id).revoked_at is not None  # type: ignore[union-attr]


def test_rotate_a_revoked_key_is_an_error(url: str, store: SQLAlchemyKeyStore) -> None:
    old = store.create_key("n")
    store.revoke(old.id)
    assert_one_line_error(run(url, "rotate", old.id), 1, "revoked")
    assert len(store.list_keys(include_revoked=True)) == 1


def test_rotate_bad_grace_exits_2(url: str, store: SQLAlchemyKeyStore) -> None:
    old = store.create_key("n")
    assert_one_line_error(run(url, "rotate", old.id, "--grace", "soon"), 2, "not a duration")
    assert store.get_key(old.id).state() == "active"  # type: ignore[union-attr]


def _log(store: SQLAlchemyKeyStore, key_id: str) -> None:
    now = datetime.now(UTC)
    rows = [
        UsageRecord(key_id, now - timedelta(days=3), "GET", "/v1/clients", 200, "10.0.0.1"),
        UsageRecord(key_id, now - timedelta(days=3), "GET", "/v1/clients", 200, "10.0.0.1"),
        UsageRecord(key_id, now - timedelta(days=3), "POST", "/v1/clients", 403, "10.0.0.1"),
        UsageRecord(key_id, now, "GET", "/v1/clients/1", 200, "10.0.0.2"),
        # A second later: rows of one instant have no order of their own.
        UsageRecord(key_id, now + timedelta(seconds=1), "DELETE", "/v1/clients/1", 401, None),
    ]
    store.record_usage(rows)


def test_usage_shows_a_chart_per_day_then_the_latest(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    _log(store, issued.id)
    result = run(url, "usage", issued.id)
    assert result.exit_code == 0, result.output
    out = result.stdout
    today = datetime.now(UTC).date().isoformat()
    earlier = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
    day_lines = [line for line in out.splitlines() if line[:10] in (today, earlier)]
    assert day_lines[0].startswith(earlier)
    assert "2xx 2" in day_lines[0]
    assert "4xx 1" in day_lines[0]
    assert "█" in day_lines[0]
    assert "▒" in day_lines[0]
    # The two identical GETs of one minute share a row.
    assert "Latest 4 rows" in out
    assert "(2 requests)" in out
    assert "5 requests in all" in out
    assert "DELETE  /v1/clients/1" in out


def test_usage_since_and_json(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    _log(store, issued.id)
    rows = json.loads(run(url, "usage", issued.id, "--since", "1d", "--json").stdout)
    assert [row["method"] for row in rows] == ["DELETE", "GET"]
    assert rows[0]["status"] == 401
    assert set(rows[0]) == {
        "key_id",
        "occurred_at",
        "method",
        "path",
        "status",
        "remote_addr",
        "requests",
    }
    assert "No requests logged" in run(url, "usage", store.create_key("quiet").id).stdout


def test_unreachable_database_is_a_one_line_error() -> None:
    result = run("postgresql+psycopg://postgres@127.0.0.1:1/test", "list")
    assert_one_line_error(result, 1, "database error")


def test_uninitialised_database_points_to_init_db(url: str) -> None:
    result = run(url, "create", "--name", "n")
    assert_one_line_error(result, 1, "init-db")


def test_unusable_database_url_is_a_one_line_error() -> None:
    assert_one_line_error(run("nosuch://x", "list"), 1, "no database driver")
    assert_one_line_error(run("not a url", "list"), 1, "cannot parse")


def test_database_url_comes_from_the_environment(
    url: str, store: SQLAlchemyKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = store.create_key("from env")
    monkeypatch.setenv("APIKEY_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["list"])
    assert issued.id in result.stdout


def test_default_database_is_apikeys_db_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("APIKEY_DATABASE_URL", raising=False)
    assert CliRunner().invoke(main, ["init-db"]).exit_code == 0
    assert (tmp_path / "apikeys.db").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("24h", timedelta(hours=24)),
        ("15m", timedelta(minutes=15)),
        ("90s", timedelta(seconds=90)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("0", timedelta(0)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d", "30", "1.5d", "30 d", "-1d", "30D", "1y", "1d-2h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "apikey"
    result = subprocess.run(  # noqa: S603
        [str(script), "--help"], capture_output=True, text=True, check=True, timeout=60
    )
    for command in ("init-db", "create", "list", "show", "revoke", "rotate", "usage"):
        assert command in result.stdout


@pytest.fixture
def flask_app(url: str) -> Flask:
    app = Flask(__name__)
    app.config.update(APIKEY_DATABASE_URL=url, APIKEY_BCRYPT_ROUNDS=TEST_ROUNDS)
    ApiKeys(app)
    return app


def test_flask_apikeys_runs_the_same_commands_on_the_apps_store(flask_app: Flask, url: str) -> None:
    runner = flask_app.test_cli_runner()
    assert runner.invoke(args=["apikeys", "init-db"]).exit_code == 0
    created = runner.invoke(
        args=["apikeys", "create", "--name", "flask", "--type", "live", "--scope", "a:b"]
    )
    assert created.exit_code == 0, created.output
    parsed = parse_key(created_key(created))
    assert parsed is not None
    listed = json.loads(runner.invoke(args=["apikeys", "list", "--json"]).stdout)
    assert [row["id"] for row in listed] == [parsed.key_id]
    rotated = runner.invoke(args=["apikeys", "rotate", parsed.key_id, "--grace", "1h"])
    assert rotated.exit_code == 0
    revoked = runner.invoke(args=["apikeys", "revoke", parsed.key_id, "--yes"])
    assert revoked.exit_code == 0
    shown = json.loads(runner.invoke(args=["apikeys", "show", parsed.key_id, "--json"]).stdout)
    assert shown["state"] == "revoked"
    assert SQLAlchemyKeyStore(url).get_key(parsed.key_id).state() == "revoked"  # type: ignore[union-attr]
    usage = runner.invoke(args=["apikeys", "usage", parsed.key_id])
    assert usage.exit_code == 0


def test_flask_apikeys_failures_are_one_line(flask_app: Flask) -> None:
    runner = flask_app.test_cli_runner()
    result = runner.invoke(args=["apikeys", "list"])
    assert result.exit_code == 1
    assert "init-db" in result.output
    assert "Traceback" not in result.output
    runner.invoke(args=["apikeys", "init-db"])
    result = runner.invoke(args=["apikeys", "revoke", "nosuchkey00000", "--yes"])
    assert result.exit_code == 1
    assert "no API key with id" in result.output
    result = runner.invoke(args=["apikeys", "create", "--name", "n", "--expires-in", "soon"])
    assert result.exit_code == 2


A_KEY = "sk_live_" + "a1b2c3d4e5f6g7" + "_" + "Q" * 34


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["create", "--name", "x", "--type", A_KEY], id="type"),
        pytest.param(["create", "--name", "x", "--expires-in", A_KEY], id="expires-in"),
        pytest.param(["create", "--name", "x", "--scope", A_KEY], id="scope"),
        pytest.param(["create", "--name", A_KEY], id="name"),
        pytest.param(["create", "--name", f"for {A_KEY}"], id="name-around-a-key"),
        pytest.param(["create", "--name", "x", "--owner", A_KEY], id="owner"),
        pytest.param(["rotate", "a1b2c3d4e5f6g7", "--grace", A_KEY], id="grace"),
        pytest.param(["revoke", "a1b2c3d4e5f6g7", A_KEY], id="extra-argument"),
        pytest.param(["list", A_KEY], id="extra-argument-of-list"),
        pytest.param(["create", "--name", "x", f"--{A_KEY}"], id="unknown-option"),
    ],
)
def test_a_key_pasted_into_any_option_is_refused_and_never_echoed(
    url: str, store: SQLAlchemyKeyStore, args: list[str]
) -> None:
    result = run(url, *args)
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    assert A_KEY not in result.output
    assert A_KEY[8:30] not in result.output
    assert "not shown" in result.stderr
    assert store.list_keys(include_revoked=True) == []


def test_stored_text_is_printed_with_control_characters_escaped(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    issued = store.create_key("plain", owner="acme")
    hostile = "/x\x1b]0;owned\x07\x1b[2J\r\n"
    store.record_usage(
        [UsageRecord(issued.id, datetime.now(UTC), "GET\x1b[1m", hostile, 200, "\x1b[31m")]
    )
    with store.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE apikey_keys SET name = ?, owner = ?", ("ev\x1bil\x9b", "o\x07wner")
        )
    for args in (["usage", issued.id], ["list"], ["show", issued.id]):
        result = run(url, *args)
        assert result.exit_code == 0, result.output
        assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", result.output), args
    assert "\\x1b]0;owned\\x07\\x1b[2J\\r\\n" in run(url, "usage", issued.id).output
    assert "ev\\x1bil\\x9b" in run(url, "show", issued.id).output


@pytest.mark.parametrize("value", ["name\x1b[2J", "tab\there", "bell\x07"])
def test_names_with_control_characters_are_refused(
    url: str, store: SQLAlchemyKeyStore, value: str
) -> None:
    result = run(url, "create", "--name", value)
    assert_one_line_error(result, 1, "control characters")
    assert store.list_keys() == []


def test_a_key_body_pasted_without_its_prefix_is_never_stored_or_echoed(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    body = store.create_key("n").key[len("sk_test_") :]
    for args in (
        ["show", body],
        ["create", "--name", body],
        ["create", "--name", "x", "--scope", body],
    ):
        result = run(url, *args)
        assert result.exit_code in (1, 2), result.output
        assert body[15:] not in result.output
    assert len(store.list_keys()) == 1


def test_stored_scopes_are_printed_escaped(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n", scopes=["clients:read"])
    with store.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE apikey_keys SET scopes = ?", ("clients:read \x1b[2J",))
    for args in (["list"], ["show", issued.id]):
        result = run(url, *args)
        assert "\x1b" not in result.output
        assert "\\x1b[2J" in result.output
    result = run(url, "rotate", issued.id, "--yes")  # a scope that is not one is not copied
    assert_one_line_error(result, 1, "invalid scope")


def test_rotate_a_key_already_rotated_is_an_error(url: str, store: SQLAlchemyKeyStore) -> None:
    old = store.create_key("n")
    assert run(url, "rotate", old.id, "--grace", "24h").exit_code == 0
    (new,) = [record for record in store.list_keys() if record.replaces == old.id]
    assert_one_line_error(
        run(url, "rotate", old.id, "--grace", "24h"), 1, f"already rotated to '{new.id}'"
    )
    # Without --grace or --yes it says so at once, without asking first.
    asked = run(url, "rotate", old.id, input="")
    assert "[y/N]" not in asked.output
    assert_one_line_error(asked, 1, f"already rotated to '{new.id}'")
    assert len(store.list_keys(include_revoked=True)) == 2
