"""What both examples do before serving: a database and fresh demo keys."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from apikey_middleware import SQLAlchemyKeyStore

#: Both examples and the command line use this database unless told otherwise.
DEFAULT_DATABASE_URL = "sqlite:///instance/apikeys.db"


def ensure_sqlite_folder(url: str) -> None:
    """Create the folder of a relative or absolute SQLite file, if missing."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != prefix + ":memory:":
        Path(url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def issue_demo_keys(
    store: SQLAlchemyKeyStore, wanted: Sequence[tuple[str, Sequence[str]]]
) -> list[str]:
    """Revoke the demo keys of earlier runs and issue ``(name, scopes)`` anew."""
    store.create_schema()
    names = {name for name, _ in wanted}
    for record in store.list_keys():
        if record.name in names:
            store.revoke(record.id)
    return [store.create_key(name, key_type="test", scopes=scopes).key for name, scopes in wanted]


def print_demo(
    base: str, keys: Sequence[tuple[str, Sequence[str], str]], tries: Sequence[str]
) -> None:
    """Print each key once, with a warning, and ``curl`` lines to paste."""
    print("\nDemo test keys. Each is shown once: store it now (the next run replaces them).\n")
    for name, scopes, key in keys:
        print(f"    {name} ({', '.join(scopes)}):\n    {key}\n")
    print("Try:\n")
    for line in tries:
        print(f"    {line}\n")
    print(f"    curl {base}/v1/clients      # no key: 401\n", flush=True)


def curl(method: str, url: str, key: str, data: str | None = None) -> str:
    """A ``curl`` line in the shape of the API documentation's example."""
    line = (
        f'curl -X {method} {url} -H "Authorization: Bearer {key}"'
        ' -H "Content-Type: application/json"'
    )
    if data is not None:
        line += f" -d '{data}'"
    return line
