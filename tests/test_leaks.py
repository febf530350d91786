"""Leak records on every database: lookups, proof of a key, revoke-and-record once."""

from __future__ import annotations

import threading
from datetime import UTC, timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from apikey_middleware import InvalidKeyError, SQLAlchemyKeyStore
from apikey_middleware._time import utcnow
from apikey_middleware.cli import main
from apikey_middleware.keys import generate_key
from apikey_middleware.leaks import (
    ReplayedReport,
    identify,
    leaks_of,
    look_up,
    record,
    token_matches,
)
from apikey_middleware.schema import ApiKey

from .conftest import Statements, parsed


def test_init_db_creates_the_leak_tables(database_url: str) -> None:
    result = CliRunner().invoke(main, ["--database-url", database_url, "init-db"])
    assert result.exit_code == 0, result.output
    engine = sa.create_engine(database_url)
    names = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {"apikey_leaks", "apikey_leak_reports"} <= names


def test_look_up_reads_all_ids_in_one_query(store: SQLAlchemyKeyStore) -> None:
    issued = [store.create_key(f"k{n}") for n in range(3)]
    statements = Statements(store)
    rows = look_up(store, [key.id for key in issued] + ["0" * 14, issued[0].id])
    assert statements.key_reads == 1
    assert set(rows) == {key.id for key in issued}
    assert repr(rows[issued[0].id]) == f"KeyRow(id={issued[0].id!r})"
    assert look_up(store, []) == {}
    # A report's worth of ids (the endpoint's bound) still takes one query.
    many = [generate_key("test").key_id for _ in range(1000)] + [issued[1].id]
    assert set(look_up(store, many)) == {issued[1].id}


def test_a_token_matches_only_its_own_row(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("real", key_type="live")
    row = look_up(store, [issued.id])[issued.id]
    assert token_matches(store, parsed(issued.key), row)
    assert not token_matches(store, parsed(generate_key("live", issued.id).key), row)
    # The same id under the other prefix is another key.
    assert not token_matches(store, parsed(generate_key("test", issued.id).key), row)


def test_identify_checks_active_keys_first_within_the_bound(store: SQLAlchemyKeyStore) -> None:
    revoked = store.create_key("old")
    store.revoke(revoked.id)
    active = store.create_key("new")
    legacy = store.create_key("made by 0.1.0")
    with store.engine.begin() as connection:
        connection.execute(sa.update(ApiKey).where(ApiKey.id == legacy.id).values(key_check=None))
    forged = generate_key("test", store.create_key("victim").id)
    keys = [
        parsed(revoked.key),
        forged,
        parsed(active.key),
        parsed(legacy.key),
        parsed(generate_key("test").key),
    ]
    # The look-alike is refuted by its check value and spends nothing; the
    # one bcrypt proves the first active key; past the bound the revoked
    # key's check value confirms it, and the 0.1.0 row's key is left over.
    ours, unchecked = identify(store, keys, max_checks=1)
    assert set(ours) == {active.key, revoked.key}
    assert unchecked == [parsed(legacy.key)]
    ours, unchecked = identify(store, keys)
    assert set(ours) == {active.key, revoked.key, legacy.key}
    assert unchecked == []


def test_ids_beyond_a_statements_parameter_limit_are_looked_up_in_batches(
    store: SQLAlchemyKeyStore,
) -> None:
    issued = store.create_key("n")
    ids = [generate_key("test").key_id for _ in range(70_000)] + [issued.id]
    assert set(look_up(store, ids)) == {issued.id}


def test_record_revokes_active_keys_and_keeps_each_place(store: SQLAlchemyKeyStore) -> None:
    active = store.create_key("leaky")
    expired = store.create_key("gone", expires_at=utcnow() + timedelta(seconds=1))
    with store.engine.begin() as connection:  # expired, without waiting
        connection.execute(
            sa.update(ApiKey)
            .where(ApiKey.id == expired.id)
            .values(expires_at=utcnow() - timedelta(days=1))
        )
    rows = look_up(store, [active.id, expired.id])
    actions = record(
        store,
        [
            (rows[active.id], "https://example.test/a", "content"),
            (rows[active.id], "https://example.test/b", "commit"),
            (rows[expired.id], "", "npm"),
        ],
        revoke=True,
        report_digest="d" * 64,
    )
    assert actions == {active.id: "revoked", expired.id: "none"}
    with pytest.raises(InvalidKeyError):
        store.authenticate(active.key)
    leaks = leaks_of(store, active.id)
    assert {(leak.url, leak.source, leak.action) for leak in leaks} == {
        ("https://example.test/a", "content", "revoked"),
        ("https://example.test/b", "commit", "revoked"),
    }
    assert all(leak.reported_at.tzinfo is UTC for leak in leaks)
    assert [leak.action for leak in leaks_of(store, expired.id)] == ["none"]


def test_a_report_is_recorded_once(store: SQLAlchemyKeyStore) -> None:
    active = store.create_key("leaky")
    row = look_up(store, [active.id])[active.id]
    record(store, [(row, "u", "s")], revoke=False, report_digest="e" * 64)
    with pytest.raises(ReplayedReport):
        record(store, [(row, "u", "s")], revoke=True, report_digest="e" * 64)
    assert [leak.action for leak in leaks_of(store, active.id)] == ["reported"]
    assert store.authenticate(active.key).key_id == active.id


def test_concurrent_copies_of_a_report_act_once(store: SQLAlchemyKeyStore) -> None:
    active = store.create_key("leaky")
    row = look_up(store, [active.id])[active.id]
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def act() -> None:
        barrier.wait()
        try:
            actions = record(store, [(row, "u", "s")], revoke=True, report_digest="f" * 64)
            outcomes.append(str(actions))
        except ReplayedReport:
            outcomes.append("replayed")

    threads = [threading.Thread(target=act) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == sorted([str({active.id: "revoked"}), *["replayed"] * 3])
    assert len(leaks_of(store, active.id)) == 1


def test_long_urls_are_cut_and_what_was_found_is_kept(store: SQLAlchemyKeyStore) -> None:
    active = store.create_key("leaky")
    row = look_up(store, [active.id])[active.id]
    record(store, [(row, "https://x.test/" + "a" * 5000, "s" * 500)], revoke=False)
    [leak] = leaks_of(store, active.id)
    assert len(leak.url) == 2000
    assert len(leak.source) == 100


def test_show_lists_the_latest_leaks_and_all_of_them_on_request(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    issued = sqlite_store.create_key("leaky")
    row = look_up(sqlite_store, [issued.id])[issued.id]
    for n in range(25):
        record(sqlite_store, [(row, f"https://example.test/{n}", "content")], revoke=False)
    url = str(sqlite_store.engine.url)
    shown = CliRunner().invoke(main, ["--database-url", url, "show", issued.id])
    assert shown.exit_code == 0, shown.output
    assert "25 recorded, the latest 20 below (--all for every one)" in shown.output
    assert shown.output.count("https://example.test/") == 20
    assert "https://example.test/24" in shown.output
    every = CliRunner().invoke(main, ["--database-url", url, "show", issued.id, "--all"])
    assert every.output.count("https://example.test/") == 25
