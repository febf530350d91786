"""The README's Python snippets, run as written, so they cannot drift."""

from __future__ import annotations

import re
import shlex
import typing as t
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from werkzeug.test import Client

from apikey_middleware.cli import main
from apikey_middleware.flask import require_scopes

from .conftest import Statements

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPET_RE = re.compile(r"```python\n(.*?)```", re.DOTALL)
INIT_DB = re.compile(r"^apikey (--database-url sqlite:///apikeys.db init-db)$", re.MULTILINE)


@pytest.fixture
def readme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, t.Any]:
    """Run every Python snippet of the README in order, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    # As the README says, before its first snippet: the tables, once.
    (command,) = INIT_DB.findall(README.read_text())
    init = CliRunner().invoke(main, shlex.split(command))
    assert init.exit_code == 0, init.output
    snippets = SNIPPET_RE.findall(README.read_text())
    assert len(snippets) >= 3
    namespace: dict[str, t.Any] = {"__name__": "readme"}
    for snippet in snippets:
        exec(compile(snippet, str(README), "exec"), namespace)  # noqa: S102
    for name in ("store", "application", "issued", "create_app", "problem_keys", "document"):
        assert name in namespace, f"the README no longer defines {name}"
    return namespace


def test_legacy_snippet_guards_the_app(readme: dict[str, t.Any]) -> None:
    client = Client(readme["application"])
    key = readme["issued"].key
    assert client.get("/v1/clients", headers={"Authorization": f"Bearer {key}"}).get_data() == (
        b"hello billing"
    )
    assert client.get("/v1/clients").status_code == 401
    assert client.post("/v1/clients", headers={"Authorization": f"Bearer {key}"}).status_code == 403
    assert client.get("/health").get_data() == b"hello world"


def test_flask_snippet_guards_the_view(readme: dict[str, t.Any]) -> None:
    app = readme["create_app"]()
    assert isinstance(app, Flask)
    client = app.test_client()
    issued = readme["issued"]
    response = client.get("/v1/clients", headers={"Authorization": f"Bearer {issued.key}"})
    assert response.json == {"success": True, "data": [], "key_id": issued.id}
    assert client.get("/v1/clients").status_code == 401
    statements = Statements(app.extensions["apikeys"].store)
    assert client.get("/health", headers={"Authorization": f"Bearer {issued.key}"}).json == {
        "status": "ok"
    }
    assert statements.seen == []  # an undecorated view reads no key
    assert client.get("/health", headers={"Authorization": "Bearer nonsense"}).status_code == 200
    readme["store"].revoke(issued.id)
    assert (
        client.get("/v1/clients", headers={"Authorization": f"Bearer {issued.key}"}).status_code
        == 401
    )


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = text[text.index("```sh") : text.index("```", text.index("```sh") + 5)]
    assert "make run" in first_block
    assert "make test" in first_block


def test_channel_mode_and_throttling_snippets(readme: dict[str, t.Any]) -> None:
    from apikey_middleware import InvalidKeyError
    from apikey_middleware.keys import generate_key

    cached, issued = readme["cached"], readme["issued"]
    assert cached.authenticate(issued.key).key_id == issued.id
    readme["store"].revoke(issued.id)
    with pytest.raises(InvalidKeyError):
        cached.authenticate(issued.key)
    cached.close()

    client = Client(readme["throttled"])
    wrong = {"Authorization": f"Bearer {generate_key('live', issued.id).key}"}
    for _ in range(20):
        assert client.get("/v1/clients", headers=wrong).status_code == 401
    response = client.get("/v1/clients", headers=wrong)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "60"


def test_secret_scanning_snippet_mounts_the_endpoint(readme: dict[str, t.Any]) -> None:
    client = readme["scanning_app"].test_client()
    response = client.post("/github/secret-scanning", data=b"[]")
    assert response.status_code == 401
    assert response.json == {
        "success": False,
        "error": {"code": "UNAUTHORIZED", "message": "The report is not signed"},
    }


def test_readme_says_a_split_key_is_not_found() -> None:
    assert "split across lines" in README.read_text()


def test_dashboard_snippet_mounts_the_page_for_the_signed_in_owner(
    readme: dict[str, t.Any],
) -> None:
    client = readme["site"].test_client()
    response = client.get("/settings/api-keys/")
    assert response.status_code == 303
    assert response.location.startswith("/login?next=")
    with client.session_transaction() as session:
        session["account"] = readme["issued"].record.owner
    page = client.get("/settings/api-keys/").get_data(as_text=True)
    assert readme["issued"].record.prefix in page
    assert "Generate New Key" in page


def test_rate_limit_snippets(readme: dict[str, t.Any]) -> None:
    limited = readme["limited"]
    record = readme["store"].get_key(limited.id)
    assert record.rate_limit == "100/minute"
    client = Client(readme["rate_limited"])
    headers = {"Authorization": f"Bearer {limited.key}"}
    response = client.get("/v1/clients", headers=headers)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "100"
    shared = readme["shared"]
    storage = shared.rate_limiter.storage
    assert storage.shared
    assert shared.throttle.storage is storage  # the throttle counts in the same Redis
    assert shared.rate_limiter.default == "100/minute"
    storage.close()


def python_snippets() -> list[str]:
    return SNIPPET_RE.findall(README.read_text())


def test_python_snippets_pass_mypy_strict(tmp_path: Path, pytestconfig: pytest.Config) -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is in the lint dependency group")
    module = tmp_path / "readme_snippets.py"
    module.write_text("\n\n".join(python_snippets()))
    cache_plugin = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    cache = cache_plugin.mkdir("mypy-readme") if cache_plugin else tmp_path
    stdout, stderr, status = api.run(
        [str(module), "--strict", "--cache-dir", str(cache), "--config-file", "/dev/null"]
    )
    assert status == 0, stdout + stderr


def test_the_flask_sections_commands_set_up_the_apps_database(
    readme: dict[str, t.Any], tmp_path: Path
) -> None:
    text = README.read_text()
    section = text[text.index("## Decorate Flask views") : text.index("### Shape the refusals")]
    commands = re.findall(r"^flask --app myapp (apikeys .*)$", section, re.MULTILINE)
    assert commands[0] == "apikeys init-db"
    app = readme["create_app"]()
    runner = app.test_cli_runner()
    for command in commands:
        result = runner.invoke(args=shlex.split(command))
        assert result.exit_code == 0, result.output
    (record,) = [r for r in app.extensions["apikeys"].store.list_keys() if r.name == "first client"]
    assert record.scopes == ("clients:read",)


def test_the_error_hook_snippet_shapes_refusals(readme: dict[str, t.Any]) -> None:
    app = Flask("problems")
    app.config["APIKEY_DATABASE_URL"] = "sqlite:///apikeys.db"  # the README's database
    readme["problem_keys"].init_app(app)

    @app.get("/")
    @require_scopes("clients:read")
    def view() -> str:
        return "never"

    response = app.test_client().get("/")
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json == {"title": "No API key provided", "status": 401, "code": "UNAUTHORIZED"}


def test_the_testing_snippet_runs_as_a_users_test_file(pytester: pytest.Pytester) -> None:
    (snippet,) = [s for s in python_snippets() if "apikey_store" in s]
    pytester.makeconftest('pytest_plugins = ["apikey_middleware.testing"]')
    pytester.makepyfile(test_api=snippet)
    result = pytester.runpytest_subprocess("-q", "-W", "error")
    result.assert_outcomes(passed=1)


def test_the_openapi_snippet_is_a_document(readme: dict[str, t.Any]) -> None:
    document = readme["document"]
    operation = document["paths"]["/v1/clients"]["get"]
    assert operation["security"] == [{"ApiKey": ["clients:read"]}]
    for reference in operation["responses"].values():
        name = reference["$ref"].rsplit("/", 1)[1]
        assert name in document["components"]["responses"]
