"""A different pepper meeting a database is refused, clearly, on every backend."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask

from apikey_middleware import InvalidKeyError, SQLAlchemyKeyStore
from apikey_middleware.cli import main
from apikey_middleware.flask import ApiKeys
from apikey_middleware.keys import generate_key
from apikey_middleware.pepper import FINGERPRINT_ROW
from apikey_middleware.schema import meta_table

from . import legacy_schema
from .conftest import TEST_ROUNDS, StoreFactory, parsed

PEPPER = b"the app's pepper"


def recorded(store: SQLAlchemyKeyStore) -> str | None:
    with store.engine.connect() as connection:
        return connection.scalar(
            sa.select(meta_table.c.value).where(meta_table.c.name == FINGERPRINT_ROW)
        )


def test_the_first_key_records_the_pepper_and_another_is_refused(
    database_url: str, store_factory: StoreFactory
) -> None:
    peppered = store_factory(database_url, pepper=PEPPER)
    assert recorded(peppered) is None  # tables alone commit to no pepper
    issued = peppered.create_key("first")
    assert recorded(peppered) == peppered.hasher.pepper_fingerprint()
    assert PEPPER.hex() not in str(recorded(peppered))

    for pepper, says in ((b"another", "differs"), (None, "is not set here")):
        other = store_factory(database_url, pepper=pepper, schema=False)
        with pytest.raises(ValueError, match="APIKEY_PEPPER") as refused:
            other.create_schema()
        assert says in str(refused.value)
        assert PEPPER.decode() not in str(refused.value)
        with pytest.raises(ValueError, match="APIKEY_PEPPER"):
            other.create_key("never")
        with pytest.raises(ValueError, match="APIKEY_PEPPER"):
            other.check_setup()
    assert [record.id for record in peppered.list_keys()] == [issued.id]


def test_a_pepper_set_where_the_keys_had_none_is_named_so(
    sqlite_url: str, store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APIKEY_PEPPER", raising=False)
    store_factory(sqlite_url).create_key("no pepper")
    with pytest.raises(ValueError, match="hashed without a pepper"):
        store_factory(sqlite_url, pepper=PEPPER, schema=False).check_setup()


def test_the_issue_flask_config_pepper_then_apikey_create_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    monkeypatch.delenv("APIKEY_PEPPER", raising=False)
    app = Flask(__name__)
    app.config.update(
        APIKEY_DATABASE_URL=url, APIKEY_PEPPER="in the config", APIKEY_BCRYPT_ROUNDS=TEST_ROUNDS
    )
    apikeys = ApiKeys(app)
    with app.app_context():
        apikeys.store.create_schema()
        apikeys.store.create_key("made by the app")
    # `apikey create` reads only the environment: no pepper there.
    result = CliRunner().invoke(main, ["--database-url", url, "create", "--name", "cli"])
    assert result.exit_code == 1
    assert "APIKEY_PEPPER" in result.stderr
    assert "Traceback" not in result.output
    with app.app_context():
        assert len(apikeys.store.list_keys()) == 1
        apikeys.store.close()


def test_an_app_with_another_pepper_refuses_to_start(sqlite_url: str) -> None:
    CliRunner().invoke(main, ["--database-url", sqlite_url, "init-db"])
    made = CliRunner(env={"APIKEY_PEPPER": ""}).invoke(
        main, ["--database-url", sqlite_url, "create", "--name", "cli"]
    )
    assert made.exit_code == 0, made.output
    app = Flask(__name__)
    app.config.update(APIKEY_DATABASE_URL=sqlite_url, APIKEY_PEPPER="in the config")
    with pytest.raises(ValueError, match="APIKEY_PEPPER"):
        ApiKeys(app)


def test_a_key_made_with_another_pepper_after_the_app_started_is_logged(
    database_url: str,
    store_factory: StoreFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """init-db, the app starts with its pepper (no key yet), then
    ``apikey create`` without one: the app's first refusal says why."""
    monkeypatch.delenv("APIKEY_PEPPER", raising=False)
    app_store = store_factory(database_url, pepper=PEPPER)
    app_store.check_setup()
    cli_store = store_factory(database_url, schema=False)
    issued = cli_store.create_key("made without the pepper")
    with caplog.at_level(logging.ERROR, logger="apikey_middleware"):
        for _ in range(5):
            with pytest.raises(InvalidKeyError):
                app_store.authenticate(parsed(issued.key))
    said = [r.getMessage() for r in caplog.records if "APIKEY_PEPPER" in r.getMessage()]
    assert len(said) == 1, "one look a minute, however many refusals"
    assert "hashed without a pepper" in said[0]
    assert issued.key not in caplog.text


def test_wrong_secrets_for_a_key_of_the_same_pepper_log_nothing(
    sqlite_url: str, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_factory(sqlite_url, pepper=PEPPER)
    issued = store.create_key("real")
    wrong = generate_key("test", issued.id).key  # same id, another secret
    with caplog.at_level(logging.INFO, logger="apikey_middleware"), pytest.raises(InvalidKeyError):
        store.authenticate(wrong)
    assert "APIKEY_PEPPER" not in caplog.text


def test_keys_made_before_fingerprints_record_the_pepper_when_one_verifies(
    database_url: str, store_factory: StoreFactory
) -> None:
    peppered = store_factory(database_url, pepper=PEPPER)
    old = peppered.create_key("old")
    with peppered.engine.begin() as connection:  # as an earlier release left it
        connection.execute(sa.delete(meta_table))
    # Nothing proves which pepper is right yet: another may still make a key.
    careless = store_factory(database_url, pepper=b"careless", schema=False)
    careless.create_key("made with the wrong pepper")
    assert recorded(peppered) is None
    restarted = store_factory(database_url, pepper=PEPPER, schema=False)  # a new process
    assert restarted.authenticate(parsed(old.key)).key_id == old.id
    assert recorded(peppered) == peppered.hasher.pepper_fingerprint()
    wrong = store_factory(database_url, pepper=b"careless", schema=False)
    with pytest.raises(ValueError, match="APIKEY_PEPPER"):
        wrong.create_key("refused now")


def test_a_new_pepper_is_recorded_once_no_key_of_the_old_one_is_usable(
    database_url: str, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    old_store = store_factory(database_url, pepper=b"old")
    old = old_store.create_key("old")
    new_store = store_factory(database_url, pepper=b"new", schema=False)
    with pytest.raises(ValueError, match="APIKEY_PEPPER"):
        new_store.create_key("refused")
    old_store.revoke(old.id)
    caplog.set_level(logging.WARNING, "apikey_middleware")
    new = new_store.create_key("new")
    assert "recording the new APIKEY_PEPPER" in caplog.text
    assert new_store.authenticate(parsed(new.key)).key_id == new.id
    assert recorded(new_store) == new_store.hasher.pepper_fingerprint()
    with pytest.raises(InvalidKeyError):
        old_store.authenticate(parsed(new.key))


def test_a_database_made_by_0_1_0_works_and_init_db_adds_the_table(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    legacy_schema.legacy_metadata.create_all(engine)
    engine.dispose()
    store = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS, pepper=PEPPER)
    assert store.check_setup() is True  # no apikey_meta yet: nothing to compare
    store.create_schema()
    issued = store.create_key("after the upgrade")
    assert store.authenticate(parsed(issued.key)).key_id == issued.id
    store.close()
