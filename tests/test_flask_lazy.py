"""Flask as Flask users expect it: the check is lazy (only decorated views
read a key), refusals reach the app's error handlers or the extension's
hook, views get the principal typed, and setup mistakes are said at start-up."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import (
    Forbidden,
    HTTPException,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)

from apikey_middleware import (
    ApiKeyError,
    ForbiddenError,
    IssuedKey,
    MissingKeyError,
    ServiceUnavailableError,
    SQLAlchemyKeyStore,
    TooManyRequestsError,
)
from apikey_middleware.flask import (
    ApiKeys,
    KeyRefused,
    current_principal,
    require_principal,
    require_scopes,
)
from apikey_middleware.keys import generate_key

from .conftest import (
    FORBIDDEN,
    INVALID,
    MISSING,
    TEST_ROUNDS,
    Statements,
    bearer,
    make_app,
)

# Bearer tokens of other schemes' shapes, which an undecorated view may get
# from clients of another API on the same host.
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


@pytest.fixture
def reader(sqlite_store: SQLAlchemyKeyStore) -> IssuedKey:
    return sqlite_store.create_key("reader", scopes=["clients:read"])


def logged(store: SQLAlchemyKeyStore, key_id: str) -> list[tuple[str, int]]:
    """Each logged request, oldest first (identical ones of a minute share a row)."""
    return [
        (row.path, row.status) for row in reversed(store.usage(key_id)) for _ in range(row.requests)
    ]


# -- undecorated views are not touched --------------------------------------


def test_undecorated_view_reads_no_key_and_touches_no_database(
    sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    client = make_app(sqlite_store).test_client()
    statements = Statements(sqlite_store)
    for header in (reader.key, generate_key("live", reader.id).key, JWT, "x" * 10_000):
        assert client.get("/open", headers=bearer(header)).json == {"key_id": None}
    assert statements.seen == []


def test_bad_tokens_sent_to_undecorated_views_never_throttle_decorated_ones(
    sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    app = make_app(sqlite_store, APIKEY_THROTTLE_LIMIT=5)
    client = app.test_client()
    for _ in range(20):
        assert client.get("/open", headers=bearer(JWT)).status_code == 200
    assert len(app.extensions["apikeys"].guard.throttle) == 0
    # The first invalid key on a decorated view is an ordinary 401, not 429.
    response = client.get("/read", headers=bearer(generate_key("test").key))
    assert (response.status_code, response.json) == (401, INVALID)
    assert client.get("/read", headers=bearer(reader.key)).status_code == 200


def test_requests_to_undecorated_views_are_not_logged(
    sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    app = make_app(sqlite_store)
    client = app.test_client()
    client.get("/open", headers=bearer(reader.key))
    client.get("/nowhere", headers=bearer(reader.key))
    client.get("/read", headers=bearer(reader.key))
    app.extensions["apikeys"].guard.flush()
    assert logged(sqlite_store, reader.id) == [("/read", 200)]


def test_stacked_decorators_authenticate_once_and_need_every_scope(
    sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    app = make_app(sqlite_store)
    admin = sqlite_store.create_key("admin", scopes=["clients:*"])

    @app.get("/both")
    @require_scopes("clients:read")
    @require_scopes("clients:delete")
    def both() -> ResponseReturnValue:
        return jsonify(key_id=require_principal().key_id)

    client = app.test_client()
    statements = Statements(sqlite_store)
    assert client.get("/both", headers=bearer(admin.key)).json == {"key_id": admin.id}
    assert statements.key_reads == 1
    response = client.get("/both", headers=bearer(reader.key))
    assert (response.status_code, response.json) == (403, FORBIDDEN)
    assert response.headers["WWW-Authenticate"].endswith('scope="clients:delete"')
    app.extensions["apikeys"].guard.flush()
    assert logged(sqlite_store, reader.id) == [("/both", 403)]
    assert sqlite_store.get_key(reader.id).last_used_at is None  # type: ignore[union-attr]


def test_decorated_refusals_are_logged_with_the_status_sent(
    sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    app = make_app(sqlite_store)
    client = app.test_client()
    client.post("/write", headers=bearer(reader.key))
    client.get("/read", headers=bearer(generate_key("test", reader.id).key))
    app.extensions["apikeys"].guard.flush()
    assert logged(sqlite_store, reader.id) == [("/write", 403), ("/read", 401)]
    assert sqlite_store.get_key(reader.id).last_used_at is None  # type: ignore[union-attr]


def test_a_view_that_raises_is_logged_as_500(
    sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    app = make_app(sqlite_store)

    @app.get("/boom")
    @require_scopes("clients:read")
    def boom() -> str:
        raise RuntimeError("a bug in the view")

    for propagate in (False, True):
        app.config["PROPAGATE_EXCEPTIONS"] = propagate
        try:
            assert app.test_client().get("/boom", headers=bearer(reader.key)).status_code == 500
        except RuntimeError:
            assert propagate
    app.extensions["apikeys"].guard.flush()
    assert logged(sqlite_store, reader.id) == [("/boom", 500), ("/boom", 500)]


# -- refusals reach the app's error handlers, or the extension's hook --------


def test_app_error_handlers_see_refusals(
    sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    app = make_app(sqlite_store)
    seen: list[tuple[str, int]] = []

    @app.errorhandler(401)
    def unauthorized(error: HTTPException) -> ResponseReturnValue:
        assert isinstance(error, KeyRefused)
        seen.append((error.error.code, t.cast(int, error.code)))
        return {"problem": error.error.code}, 401

    @app.errorhandler(403)
    def forbidden(error: KeyRefused) -> ResponseReturnValue:
        seen.append((error.error.code, t.cast(int, error.code)))
        return error.get_response()

    client = app.test_client()
    assert client.get("/read").json == {"problem": "UNAUTHORIZED"}
    assert client.get("/read", headers=bearer("sk_test_nope")).json == {
        "problem": "INVALID_API_KEY"
    }
    response = client.post("/write", headers=bearer(reader.key))
    assert (response.status_code, response.json) == (403, FORBIDDEN)
    assert seen == [("UNAUTHORIZED", 401), ("INVALID_API_KEY", 401), ("FORBIDDEN", 403)]
    app.extensions["apikeys"].guard.flush()
    assert logged(sqlite_store, reader.id) == [("/write", 403)]


def test_a_handler_for_key_refused_or_werkzeugs_class_catches_them(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    app = make_app(sqlite_store)

    @app.errorhandler(KeyRefused)
    def refused(error: KeyRefused) -> ResponseReturnValue:
        return {"refused": error.error.status}, error.error.status

    assert app.test_client().get("/read").json == {"refused": 401}
    assert isinstance(KeyRefused.of(MissingKeyError()), Unauthorized)
    assert isinstance(KeyRefused.of(ForbiddenError()), Forbidden)
    assert isinstance(KeyRefused.of(TooManyRequestsError(3)), TooManyRequests)
    assert isinstance(KeyRefused.of(ServiceUnavailableError()), ServiceUnavailable)


def test_error_hook_shapes_every_refusal_and_is_logged_with_its_status(
    sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    apikeys = ApiKeys(store=sqlite_store)
    app = Flask(__name__)
    apikeys.init_app(app)

    @apikeys.error_handler
    def refused(error: ApiKeyError) -> ResponseReturnValue:
        return {"message": error.message, "code": error.code}, 418

    @app.get("/write")
    @require_scopes("clients:write")
    def write() -> str:
        return "never"

    client = app.test_client()
    response = client.get("/write")
    assert (response.status_code, response.json) == (
        418,
        {"message": "No API key provided", "code": "UNAUTHORIZED"},
    )
    response = client.get("/write", headers=bearer(reader.key))
    assert response.json == {"code": "FORBIDDEN", "message": FORBIDDEN["error"]["message"]}  # type: ignore[index]
    app.extensions["apikeys"].guard.flush()
    assert logged(sqlite_store, reader.id) == [("/write", 418)]


def test_without_handlers_the_answer_is_the_json_error(sqlite_store: SQLAlchemyKeyStore) -> None:
    response = make_app(sqlite_store).test_client().get("/read")
    assert response.get_data() == (
        b'{"success": false, "error": {"code": "UNAUTHORIZED", "message": "No API key provided"}}'
    )
    assert response.json == MISSING


# -- the principal, typed ----------------------------------------------------


def test_require_principal_gives_the_principal_in_a_decorated_view_only(
    sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    app = make_app(sqlite_store)

    @app.get("/typed")
    @require_scopes("clients:read")
    def typed() -> ResponseReturnValue:
        principal = require_principal()
        return jsonify(key_id=principal.key_id, same=principal == current_principal)

    @app.get("/untyped")
    def untyped() -> ResponseReturnValue:
        return jsonify(key_id=require_principal().key_id)

    client = app.test_client()
    assert client.get("/typed", headers=bearer(reader.key)).json == {
        "key_id": reader.id,
        "same": True,
    }
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match="@require_scopes"):
        client.get("/untyped", headers=bearer(reader.key))
    with pytest.raises(RuntimeError, match="@require_scopes"):
        require_principal()


# -- setup mistakes are said at start-up -------------------------------------


def test_missing_tables_are_a_warning_at_start_naming_init_db(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    sa.create_engine(url).connect().close()  # the file, without tables
    caplog.set_level(logging.WARNING, "apikey_middleware")
    app = make_app(APIKEY_DATABASE_URL=url, APIKEY_BCRYPT_ROUNDS=TEST_ROUNDS)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("flask apikeys init-db" in message for message in warnings), warnings
    caplog.clear()
    # Each refused request's log line says it again.
    response = app.test_client().get("/read", headers=bearer(generate_key("test").key))
    assert response.status_code == 503
    assert any("init-db" in r.getMessage() for r in caplog.records)
    app.extensions["apikeys"].store.close()


FLASK_APP = """
from flask import Flask
from apikey_middleware.flask import ApiKeys

app = Flask(__name__)
ApiKeys(app)
"""


def test_flask_apikeys_init_db_does_not_first_warn_to_run_itself(tmp_path: Path) -> None:
    (tmp_path / "keysapp.py").write_text(FLASK_APP)
    env = {**os.environ, "APIKEY_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}"}
    flask = [str(Path(sys.executable).with_name("flask")), "--app", "keysapp", "apikeys"]
    made = subprocess.run(  # noqa: S603
        [*flask, "init-db"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    assert "missing" not in made.stderr + made.stdout
    listed = subprocess.run(  # noqa: S603
        [*flask, "list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert "warning" not in listed.stderr.lower()


def test_under_a_flask_command_missing_tables_are_said_at_the_first_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    sa.create_engine(url).connect().close()
    caplog.set_level(logging.WARNING, "apikey_middleware")
    with click.Context(click.Command("run")):
        app = make_app(APIKEY_DATABASE_URL=url, APIKEY_BCRYPT_ROUNDS=TEST_ROUNDS)
    assert not [r for r in caplog.records if "init-db" in r.getMessage()]
    app.test_client().get("/open")
    app.test_client().get("/open")
    said = [r for r in caplog.records if "flask apikeys init-db" in r.getMessage()]
    assert len(said) == 1
    app.extensions["apikeys"].store.close()


def test_a_missing_sqlite_file_is_reported_and_not_created(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "nothing.db"
    caplog.set_level(logging.WARNING, "apikey_middleware")
    app = make_app(APIKEY_DATABASE_URL=f"sqlite:///{path}")
    assert any("init-db" in r.getMessage() for r in caplog.records)
    assert not path.exists()
    app.extensions["apikeys"].store.close()


def test_a_ready_database_logs_nothing_at_start(
    sqlite_store: SQLAlchemyKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "apikey_middleware")
    make_app(sqlite_store)
    assert caplog.records == []


def test_a_database_down_at_start_does_not_stop_the_app(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "apikey_middleware")
    app = make_app(APIKEY_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/test")
    assert any("could not check" in r.getMessage() for r in caplog.records)
    assert app.test_client().get("/open").status_code == 200


def test_an_app_without_a_database_setting_uses_the_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README exports APIKEY_DATABASE_URL for the ``apikey`` command:
    an app whose config names no database uses the same one."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("APIKEY_DATABASE_URL", url)
    app = make_app(APIKEY_BCRYPT_ROUNDS=TEST_ROUNDS)
    assert app.extensions["apikeys"].store.url == sa.make_url(url).render_as_string()
    app.extensions["apikeys"].store.close()
    monkeypatch.setenv("APIKEY_DATABASE_URL", "not a url")
    with pytest.raises(ValueError, match=r"APIKEY_DATABASE_URL \(environment\)"):
        make_app()
