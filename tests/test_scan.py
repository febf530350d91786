"""``apikey scan`` on real trees, the scanner itself, and the pre-commit hook."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tracemalloc
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # (no stubs installed)
from click.testing import CliRunner, Result
from flask import Flask

from apikey_middleware import InvalidKeyError, IssuedKey, SQLAlchemyKeyStore
from apikey_middleware.cli import main
from apikey_middleware.flask import ApiKeys
from apikey_middleware.keys import generate_key
from apikey_middleware.leaks import leaks_of
from apikey_middleware.scan import Scanner, find_keys, parse_size, printable

from .servers import BIN, ROOT

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/none"


def run(url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, "scan", *args], input=input)


def assert_no_secret(result: Result, *keys: IssuedKey | str) -> None:
    text = result.stdout + result.stderr
    for key in keys:
        secret = key if isinstance(key, str) else key.key
        assert secret not in text
        assert secret[23:] not in text


@pytest.fixture
def url(sqlite_store: SQLAlchemyKeyStore) -> str:
    return sqlite_store.engine.url.render_as_string(hide_password=False)


class Tree:
    """A temporary project with keys in the places a scan must and must not look."""

    def __init__(self, root: Path, store: SQLAlchemyKeyStore) -> None:
        self.root = root
        self.active = store.create_key("in source", key_type="live")
        self.revoked = store.create_key("minified")
        store.revoke(self.revoked.id)
        self.split = store.create_key("split")
        self.binary = store.create_key("in a binary")
        self.hidden = store.create_key("in .git")
        self.forged = generate_key("live", store.create_key("victim").id).key
        self.stranger = generate_key("test").key  # valid checksum, not of this store
        self.write("src/settings.py", f'DEBUG = True\n\nAPI_KEY = "{self.active.key}"\n')
        minified = "var a=1;" * 40_000 + f'k="{self.revoked.key}";' + "b=2;" * 1000
        self.write("static/app.min.js", minified)
        key = self.split.key
        self.write(
            "docs/notes.txt", f"key: {key[:30]}\n{key[30:]}\n" + f'"{key[:20]}" + "{key[20:]}"'
        )
        self.write("assets/logo.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + self.binary.key.encode())
        self.write(".git/config", f"token = {self.hidden.key}\n")
        self.write("tests/fixtures.json", json.dumps({"a": self.forged, "b": self.stranger}))
        bad = self.active.key[:-1] + ("A" if self.active.key[-1] != "A" else "B")
        self.write("src/typo.py", f"KEY = '{bad}'  # bad checksum\n" + "sk_live_" * 1000)

    def write(self, name: str, content: str | bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)

    def keys(self) -> list[str]:
        named = [self.active, self.revoked, self.split, self.binary, self.hidden]
        return [key.key for key in named] + [self.forged, self.stranger]


@pytest.fixture
def tree(tmp_path: Path, sqlite_store: SQLAlchemyKeyStore, monkeypatch: pytest.MonkeyPatch) -> Tree:
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    return Tree(root, sqlite_store)


def test_scan_reports_keys_in_source_and_minified_files_with_their_state(
    url: str, tree: Tree
) -> None:
    result = run(url)
    assert result.exit_code == 1, result.output
    column = 8 * 40_000 + 4
    victim = tree.forged[8:22]
    stranger = tree.stranger[8:22]
    assert result.stdout.splitlines() == [
        f"src/settings.py:3:12: live key {tree.active.id} active",
        f"static/app.min.js:1:{column}: test key {tree.revoked.id} revoked",
        f"tests/fixtures.json:1:8: live key {victim} unknown",
        f"tests/fixtures.json:1:{8 + 57 + 9}: test key {stranger} unknown",
    ]
    assert "4 key(s) found; 5 file(s) read" in result.stderr
    assert "skipped 1 binary" in result.stderr
    assert_no_secret(result, *tree.keys())


def test_a_key_split_across_lines_or_strings_is_not_found(tree: Tree) -> None:
    finds = list(Scanner().scan(["docs"]))
    assert finds == []


def test_only_revoked_keys_found_exits_0(url: str, tree: Tree) -> None:
    result = run(url, "static", "tests")
    assert result.exit_code == 0, result.output
    assert f"{tree.revoked.id} revoked" in result.stdout


def test_json_lists_each_find(url: str, tree: Tree) -> None:
    result = run(url, "--json", "src")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == [
        {
            "path": "src/settings.py",
            "line": 3,
            "column": 12,
            "key_id": tree.active.id,
            "key_type": "live",
            "state": "active",
            "revoked_now": False,
        }
    ]
    assert_no_secret(result, *tree.keys())


def test_revoke_yes_revokes_the_active_keys_and_records_where(
    url: str, tree: Tree, sqlite_store: SQLAlchemyKeyStore
) -> None:
    result = run(url, "--revoke", "--yes")
    assert result.exit_code == 1, result.output
    assert f"{tree.active.id} active, revoked now" in result.stdout
    with pytest.raises(InvalidKeyError):
        sqlite_store.authenticate(tree.active.key)
    [leak] = leaks_of(sqlite_store, tree.active.id)
    assert (leak.source, leak.action) == ("apikey scan", "revoked")
    assert leak.url == f"{tree.root / 'src' / 'settings.py'}:3"
    # The forged key's real owner is not touched.
    victim = sqlite_store.get_key(tree.forged[8:22])
    assert victim is not None
    assert victim.revoked_at is None
    again = run(url, "--revoke", "--yes")
    assert again.exit_code == 0
    assert "revoked now" not in again.stdout
    shown = CliRunner().invoke(main, ["--database-url", url, "show", tree.active.id])
    assert "leaks:      1 recorded" in shown.stdout
    assert "revoked  apikey scan" in shown.stdout
    assert "settings.py:3" in shown.stdout
    shown_json = CliRunner().invoke(main, ["--database-url", url, "show", "--json", tree.active.id])
    [recorded] = json.loads(shown_json.stdout)["leaks"]
    assert recorded["action"] == "revoked"
    assert_no_secret(result, *tree.keys())
    assert_no_secret(shown, *tree.keys())


def test_revoke_asks_first_and_no_changes_nothing(
    url: str, tree: Tree, sqlite_store: SQLAlchemyKeyStore
) -> None:
    result = run(url, "--revoke", input="n\n")
    assert result.exit_code == 1
    assert f"Revoke 1 active key(s): {tree.active.id}?" in result.stderr
    assert "Aborted" not in result.output
    assert f"{tree.active.id}" in result.stdout, "a no still says where each key is"
    assert "active" in result.stdout
    assert sqlite_store.authenticate(tree.active.key).key_id == tree.active.id
    assert leaks_of(sqlite_store, tree.active.id) == []
    result = run(url, "--revoke", input="y\n")
    with pytest.raises(InvalidKeyError):
        sqlite_store.authenticate(tree.active.key)


def test_offline_needs_no_database_and_fails_on_any_valid_key(tree: Tree) -> None:
    result = run(UNREACHABLE, "--offline", "static")
    assert result.exit_code == 1
    assert result.stdout == f"static/app.min.js:1:320004: test key {tree.revoked.id}\n"
    assert run(UNREACHABLE, "--offline", "docs").exit_code == 0
    assert_no_secret(result, *tree.keys())


def test_offline_and_revoke_is_a_usage_error(tree: Tree) -> None:
    result = run(UNREACHABLE, "--offline", "--revoke")
    assert result.exit_code == 2
    assert "--revoke needs the database" in result.stderr


@pytest.mark.parametrize("database", [UNREACHABLE, "nosuch://x"], ids=["unreachable", "no-driver"])
def test_a_database_that_cannot_be_read_exits_2_with_one_line(tree: Tree, database: str) -> None:
    result = run(database, "src")
    assert result.exit_code == 2
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1
    assert "--offline" in errors[0]
    assert "Traceback" not in result.output


def test_a_database_without_tables_exits_2(tree: Tree, tmp_path: Path) -> None:
    result = run(f"sqlite:///{tmp_path / 'empty.db'}", "src")
    assert result.exit_code == 2
    assert "init-db" in result.stderr


def test_nothing_found_needs_no_database(tree: Tree) -> None:
    result = run(UNREACHABLE, "docs", "src/typo.py")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "0 key(s) found" in result.stderr


def test_binary_huge_and_excluded_files_and_git_are_skipped(url: str, tree: Tree) -> None:
    tree.write("dump.sql", "x" * 2048 + tree.active.key)
    result = run(url, "--offline", "--max-size", "1K", "--exclude", "src", "--exclude", "*.json")
    assert "larger than 1,024 bytes" in result.stderr
    # The binary logo; the dump and the minified file, both over 1K.
    assert "skipped 1 binary, 2 larger" in result.stderr
    assert tree.active.id not in result.stdout
    assert tree.hidden.id not in result.stdout
    assert tree.binary.id not in result.stdout
    assert run(url, "--max-size", "ten").exit_code == 2


def test_paths_are_printed_with_control_characters_escaped_and_keys_masked(
    url: str, tree: Tree
) -> None:
    tree.write("odd\x1b[31mname\n.txt", tree.revoked.key)
    tree.write(f"{tree.active.key}.txt", tree.revoked.key)
    result = run(url, "--offline", f"{tree.active.key}.txt", "odd\x1b[31mname\n.txt")
    assert result.stdout.splitlines() == [
        f"sk_live_{tree.active.id[:4]}….txt:1:1: test key {tree.revoked.id}",
        f"odd\\x1b[31mname\\n.txt:1:1: test key {tree.revoked.id}",
    ]
    assert_no_secret(result, *tree.keys())


def test_a_missing_path_is_a_usage_error_and_odd_files_do_not_hang(url: str, tree: Tree) -> None:
    result = run(url, "--offline", "nosuch")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    os.mkfifo("pipe")
    os.symlink("nowhere", "broken")
    os.symlink("..", "docs/loop")  # met while walking: not followed
    result = run(url, "--offline", "pipe", "broken", "docs")
    assert result.exit_code == 0
    assert "2 unreadable" in result.stderr


def test_flask_apikeys_scan_uses_the_apps_store(
    sqlite_store: SQLAlchemyKeyStore, tree: Tree
) -> None:
    app = Flask(__name__)
    ApiKeys(app, store=sqlite_store)
    result = app.test_cli_runner().invoke(args=["apikeys", "scan", "src", "static"])
    assert result.exit_code == 1
    assert f"{tree.active.id} active" in result.stdout
    assert f"{tree.revoked.id} revoked" in result.stdout
    app.extensions["apikeys"].middleware.close()


def test_find_keys_gives_line_and_column_and_ignores_look_alikes() -> None:
    key = generate_key("live").key
    data = f"first\nx = {key}\n\n{key}{key}\nsk_live_{key[8:-1]}!".encode()
    found = [(line, column, parsed.key) for line, column, parsed in find_keys(data)]
    assert found == [(2, 5, key), (4, 1, key), (4, 58, key)]


@pytest.mark.parametrize(
    ("text", "size"), [("500K", 512_000), ("10M", 10 * 2**20), ("1g", 2**30), ("4096", 4096)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "10T", "-1", "", "1.5M"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_printable_masks_keys_and_escapes_controls() -> None:
    key = generate_key("test").key
    assert printable(f"a {key}\tb\udcff") == f"a sk_test_{key[8:12]}…\\tb\\udcff"
    assert printable("plain é") == "plain é"


def test_this_repository_holds_no_key() -> None:
    # The rule of the project: no real-looking key is committed.
    tools = [".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "instance"]
    excluded = [arg for name in tools for arg in ("--exclude", name)]
    result = subprocess.run(  # noqa: S603
        [str(BIN / "apikey"), "scan", "--offline", *excluded, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def _hook() -> dict[str, object]:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    [hook] = [hook for hook in hooks if hook["id"] == "apikey-scan"]
    return dict(hook)


def test_the_pre_commit_hook_is_offline_and_passes_file_names() -> None:
    hook = _hook()
    assert hook["language"] == "python"
    assert hook.get("pass_filenames", True) is True
    assert "--offline" in shlex.split(str(hook["entry"]))


def test_the_pre_commit_hook_refuses_staged_files_with_a_key(tmp_path: Path) -> None:
    # Run exactly as pre-commit does: entry, then args, then the file names,
    # with the hook's environment's scripts on PATH (no database anywhere).
    hook = _hook()
    key = generate_key("live").key
    (tmp_path / "clean.py").write_text("API_KEY = os.environ['API_KEY']\n")
    (tmp_path / "leaky.py").write_text(f"API_KEY = '{key}'\n")
    command = [*shlex.split(str(hook["entry"])), *map(str, hook.get("args", []))]  # type: ignore[call-overload]
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "APIKEY_DATABASE_URL": UNREACHABLE,
    }

    def commit(*files: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603
            [*command, *files], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    assert commit("clean.py").returncode == 0
    refused = commit("clean.py", "leaky.py")
    assert refused.returncode == 1
    assert refused.stdout == f"leaky.py:1:12: live key {key[8:22]}\n"
    assert key not in refused.stdout + refused.stderr
    # Staged files whose names look like options are files all the same.
    for name in ("--help", "-h", "--max-size=1", "-x.py"):
        (tmp_path / name).write_text("nothing here\n")
        assert commit(name, "clean.py").returncode == 0, name
        assert commit(name, "leaky.py").returncode == 1, name


def test_scanner_counts_what_it_reads(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / "b.bin").write_bytes(b"\0" * 10)
    scanner = Scanner(max_size=100)
    assert list(scanner.scan([str(tmp_path)])) == []
    assert (scanner.stats.files, scanner.stats.bytes, scanner.stats.binary) == (1, 6, 1)
    with pytest.raises(ValueError, match="max_size"):
        Scanner(max_size=0)


def test_keys_on_one_long_line_get_their_own_columns() -> None:
    key = generate_key("test").key
    line = (key + " ").encode() * 20_000  # one 1.2 MB line
    finds = list(find_keys(b"first line\n" + line))
    assert len(finds) == 20_000
    assert finds[0][:2] == (2, 1)
    assert finds[-1][:2] == (2, 19_999 * 58 + 1)


def test_scanning_a_file_takes_its_size_in_memory_once(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"a" * 20_000_000 + b"\n")
    tracemalloc.start()
    try:
        list(Scanner(max_size=50_000_000).scan_file(str(path)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30_000_000, peak
