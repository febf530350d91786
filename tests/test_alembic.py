"""The schema's upgrade path: Alembic autogenerate from the public MetaData.

On an empty PostgreSQL database, an Alembic environment whose
``target_metadata`` is ``SQLAlchemyKeyStore.metadata`` generates and applies
a migration; the result must be the schema ``create_schema()`` makes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from apikey_middleware import SQLAlchemyKeyStore

from .conftest import StoreFactory, server_url

pytestmark = pytest.mark.slow


@pytest.fixture
def empty_databases() -> Iterator[tuple[str, str]]:
    base = sa.make_url(server_url("postgresql"))
    names = [f"apikey_alembic_{secrets.token_hex(4)}" for _ in range(2)]
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        for name in names:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield tuple(base.set(database=name).render_as_string(hide_password=False) for name in names)  # type: ignore[misc]
    with admin.connect() as connection:
        for name in names:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def describe(url: str) -> dict[str, object]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    inspector = sa.inspect(engine)
    shape: dict[str, object] = {}
    for table in sorted(name for name in inspector.get_table_names() if name != "alembic_version"):
        shape[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ],
            "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), i["unique"])
                for i in inspector.get_indexes(table)
            ),
            "foreign keys": sorted(
                (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                for f in inspector.get_foreign_keys(table)
            ),
        }
    engine.dispose()
    return shape


def test_alembic_autogenerate_builds_the_same_schema_as_create_schema(
    empty_databases: tuple[str, str],
    tmp_path: Path,
    store_factory: StoreFactory,
) -> None:
    migrated, created = empty_databases
    config = Config(str(tmp_path / "alembic.ini"))
    config.set_main_option("script_location", str(tmp_path / "migrations"))
    command.init(config, str(tmp_path / "migrations"))
    env = tmp_path / "migrations" / "env.py"
    text = env.read_text()
    text = text.replace(
        "target_metadata = None",
        "from apikey_middleware import SQLAlchemyKeyStore\n"
        "target_metadata = SQLAlchemyKeyStore.metadata",
    )
    text = text.replace("    fileConfig(config.config_file_name)", "    pass")
    env.write_text(text)
    # Migrations name the store's column type, so they import its module.
    mako = tmp_path / "migrations" / "script.py.mako"
    mako.write_text(
        mako.read_text().replace(
            "import sqlalchemy as sa\n", "import sqlalchemy as sa\nimport apikey_middleware.store\n"
        )
    )
    config.set_main_option("sqlalchemy.url", migrated.replace("%", "%%"))

    command.revision(config, message="api keys", autogenerate=True)
    command.upgrade(config, "head")
    store_factory(created)  # the tables as create_schema() makes them

    engine = sa.create_engine(migrated, poolclass=sa.NullPool)
    with engine.connect() as connection:
        assert (
            compare_metadata(MigrationContext.configure(connection), SQLAlchemyKeyStore.metadata)
            == []
        )
    engine.dispose()
    assert describe(migrated) == describe(created)
    assert set(describe(created)) == {
        "apikey_keys",
        "apikey_usage",
        "apikey_usage_rollups",
        "apikey_usage_batches",
        "apikey_leaks",
        "apikey_leak_reports",
        "apikey_meta",
    }
