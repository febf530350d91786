"""What both examples do before serving: a free port, a database and fresh demo keys."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from apikey_middleware import SQLAlchemyKeyStore

#: Both examples and the command line use this database unless told otherwise.
DEFAULT_DATABASE_URL = "sqlite:///instance/apikeys.db"


def ensure_sqlite_folder(url: str) -> None:
    """Create the folder of a relative or absolute SQLite file, if missing."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != prefix + ":memory:":
        Path(url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (checked before
    any demo key is touched, so a second run cannot break the first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def busy_port(host: str, port: int, target: str) -> str:
    """What to say when ``port`` is taken: stop that server, or use the
    next port that is free now."""
    free = next((other for other in range(port + 1, port + 100) if port_is_free(host, other)), None)
    other = f": make {target} PORT={free}" if free is not None else " (make run PORT=...)"
    return (
        f"Port {port} on {host} is in use (another `make run`?): stop that"
        f" server, or serve on another port{other}"
    )


def demo_name(name: str, port: int) -> str:
    """A demo key's name: each port's server has its own keys."""
    return f"{name} (port {port})"


def issue_demo_keys(
    store: SQLAlchemyKeyStore, wanted: Sequence[tuple[str, Sequence[str]]]
) -> list[str]:
    """Revoke the demo keys of earlier runs on the same port (its server is
    gone: the port was free) and issue ``(name, scopes)`` anew."""
    store.create_schema()
    names = {name for name, _ in wanted}
    for record in store.list_keys():
        if record.name in names:
            store.revoke(record.id)
    return [store.create_key(name, key_type="test", scopes=scopes).key for name, scopes in wanted]


def cli_database_line(url: str) -> str:
    """How to point ``apikey`` at the example's database, from any folder
    (a password is not printed)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        parsed = parsed.set(database=os.path.abspath(parsed.database))
    line = f"    export APIKEY_DATABASE_URL={parsed.render_as_string(hide_password=True)}"
    if parsed.password:
        line += "   # with your password for ***"
    return f"To manage its keys with the apikey command, in another terminal:\n\n{line}"


def print_demo(
    base: str,
    database_url: str,
    keys: Sequence[tuple[str, Sequence[str], str]],
    tries: Sequence[str],
    *,
    extra: Sequence[str] = (),
) -> None:
    """Print each key once, with a warning, ``curl`` lines to paste, and
    how the command line reaches the same database."""
    print("\nDemo test keys. Each is shown once: store it now (the next run replaces them).\n")
    for name, scopes, key in keys:
        print(f"    {name} ({', '.join(scopes)}):\n    {key}\n")
    print(cli_database_line(database_url) + "\n")
    for line in extra:
        print(line + "\n")
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
