"""The documentation against the code: what the pages list is what the code has.

``make docs`` checks that every cross-reference resolves; these check what a
build cannot: that the configuration reference names every option and
setting with the default the code has, that every public module has its API
page, and that the quickstart's snippet runs as written.
"""

from __future__ import annotations

import ast
import inspect
import pkgutil
import re
import shlex
import typing as t
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from werkzeug.test import Client

import apikey_middleware
from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore
from apikey_middleware.cli import main
from apikey_middleware.flask import ApiKeys

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONFIGURATION = DOCS / "configuration.rst"
SECTIONS = {"The key store": SQLAlchemyKeyStore, "The middleware": ApiKeyMiddleware}
SETTING_RE = re.compile(r"``(APIKEY_\w+)``(?: \(default ``([^`]*)``)?")


@dataclass
class Row:
    option: str
    flask: str
    default: str


def list_table_rows(text: str) -> list[list[str]]:
    """The cells of each row of the list-tables in ``text``, header rows included."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("   * - "):
            rows.append([line[7:]])
        elif line.startswith("     - ") and rows:
            rows[-1].append(line[7:])
        elif line.startswith("       ") and rows:
            rows[-1][-1] += " " + line.strip()
    return rows


def option_rows(section: str) -> dict[str, Row]:
    """The option table of one section of the configuration page, by option."""
    text = CONFIGURATION.read_text()
    starts = sorted(text.index(f"\n{title}\n") for title in SECTIONS)
    start = text.index(f"\n{section}\n")
    end = next((position for position in starts if position > start), len(text))
    rows = {}
    for option, flask, default, _ in list_table_rows(text[start:end])[1:]:
        rows[option.strip("`")] = Row(option.strip("`"), flask, default)
    return rows


def literal(cell: str) -> t.Any:
    match = re.fullmatch(r"``(.*)``", cell)
    assert match, f"not a literal: {cell!r}"
    return ast.literal_eval(match.group(1))


@pytest.mark.parametrize("section", list(SECTIONS))
def test_configuration_page_lists_every_option_with_the_default_of_the_code(
    section: str,
) -> None:
    parameters = inspect.signature(SECTIONS[section]).parameters
    rows = option_rows(section)
    assert set(rows) == set(parameters), f"docs/configuration.rst, {section!r}: add or remove rows"
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty:
            assert rows[name].default == "required", name
        else:
            assert literal(rows[name].default) == parameter.default, name


def test_configuration_page_lists_every_flask_setting_with_the_default_of_the_code(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    app = Flask(__name__)
    ApiKeys(app, store=sqlite_store)
    app.extensions["apikeys"].middleware.close()
    settings = {name: value for name, value in app.config.items() if name.startswith("APIKEY_")}
    documented = {}
    for section in SECTIONS:
        for row in option_rows(section).values():
            for name, default in SETTING_RE.findall(row.flask):
                documented[name] = literal(f"``{default}``" if default else row.default)
    assert set(documented) == set(settings), "docs/configuration.rst: add or remove settings"
    for name, value in settings.items():
        assert documented[name] == value, name


def test_flask_settings_are_tabled_only_on_the_configuration_page() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    assert not re.search(r"^\| `APIKEY_", readme, re.MULTILINE)
    assert "(docs/configuration.rst)" in readme
    docstring = ApiKeys.__doc__ or ""
    assert not re.search(r"``APIKEY_[A-Z]", docstring)
    assert ":ref:`configuration`" in docstring


def public_modules() -> set[str]:
    found = {apikey_middleware.__name__}
    for module in pkgutil.walk_packages(apikey_middleware.__path__, "apikey_middleware."):
        if not any(part.startswith("_") for part in module.name.split(".")):
            found.add(module.name)
    return found


def test_every_public_module_has_an_api_page() -> None:
    text = (DOCS / "api.rst").read_text()
    listed = set(re.findall(r"^   (apikey_middleware[\w.]*)$", text, re.MULTILINE))
    assert listed == public_modules(), "docs/api.rst: the autosummary list of modules"


def test_quickstart_commands_and_snippet_guard_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APIKEY_BCRYPT_ROUNDS", "4")
    text = (DOCS / "quickstart.md").read_text()
    commands = re.findall(r"^apikey (.+)$", text.split("## Guard an app")[1], re.MULTILINE)
    assert commands[0].endswith("init-db")
    assert " create " in commands[1]
    outputs = []
    for command in commands[:2]:
        result = CliRunner().invoke(main, shlex.split(command))
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout)
    (key,) = re.findall(r"^\s+(sk_test_\w+)$", outputs[1], re.MULTILINE)
    (snippet,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert "create_schema" not in snippet
    assert "create_key" not in snippet
    namespace: dict[str, t.Any] = {"__name__": "quickstart"}
    exec(compile(snippet, str(DOCS / "quickstart.md"), "exec"), namespace)  # noqa: S102
    client = Client(namespace["app"])
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/reports", headers=headers).get_data() == b"hello first client"
    assert client.get("/reports").status_code == 401
    namespace["store"].revoke(key[8:22])
    assert client.get("/reports", headers=headers).status_code == 401
    namespace["app"].close()
    namespace["store"].close()
