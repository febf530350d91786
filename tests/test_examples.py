"""The examples, run as a newcomer runs them: a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import typing as t
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .servers import apikey as run_apikey
from .servers import free_port

ROOT = Path(__file__).resolve().parent.parent
KEY_RE = re.compile(r"^\s+(sk_test_[A-Za-z0-9_]+)$", re.MULTILINE)
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@dataclass
class Served:
    base: str
    output: str

    @property
    def keys(self) -> list[str]:
        return KEY_RE.findall(self.output)

    def curl_lines(self) -> list[str]:
        return [
            line.strip() for line in self.output.splitlines() if line.strip().startswith("curl")
        ]


def get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, t.Any]]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def example_env(tmp_path: Path, *, database: bool = True) -> dict[str, str]:
    """The environment of an example: its database in ``tmp_path``, or (as a
    newcomer has it) no ``APIKEY_DATABASE_URL`` at all."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("APIKEY_DATABASE_URL", None)
    if database:
        env["APIKEY_DATABASE_URL"] = f"sqlite:///{tmp_path / 'example.db'}"
    return env


@contextmanager
def serve(
    module: str,
    tmp_path: Path,
    *,
    port: int | None = None,
    cwd: Path = ROOT,
    database: bool = True,
) -> Iterator[Served]:
    """Run ``python -m module`` as ``make run`` does, until the test ends."""
    port = port or free_port()
    env = example_env(tmp_path, database=database)
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", module, "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    try:
        output = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            output.append(line)
            if not line or "# no key" in line:
                break
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield Served(f"http://127.0.0.1:{port}", "".join(output))
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def run_pasted(line: str) -> dict[str, t.Any]:
    """Run a printed ``curl`` line as a shell would, comment dropped."""
    command = shlex.split(line, comments=True)
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)  # noqa: S603
    return t.cast(dict[str, t.Any], json.loads(result.stdout))


@pytest.fixture
def legacy(tmp_path: Path) -> Iterator[Served]:
    with serve("examples.legacy_app", tmp_path) as served:
        yield served


@pytest.fixture
def flask_example(tmp_path: Path) -> Iterator[Served]:
    with serve("examples.flask_app", tmp_path) as served:
        yield served


def test_legacy_example_prints_its_key_once_with_a_warning(legacy: Served) -> None:
    (key,) = legacy.keys
    assert "shown once" in legacy.output
    assert legacy.output.count(key) == 2  # the key, and the curl line that uses it
    assert any(f'-H "Authorization: Bearer {key}"' in line for line in legacy.curl_lines())


def test_legacy_example_guards_its_routes(legacy: Served) -> None:
    (key,) = legacy.keys
    assert get(f"{legacy.base}/health") == (200, {"status": "ok"})
    status, body = get(f"{legacy.base}/v1/clients")
    assert status == 401
    assert body["error"] == {"code": "UNAUTHORIZED", "message": "No API key provided"}
    auth = {"Authorization": f"Bearer {key}"}
    status, body = get(f"{legacy.base}/v1/clients", auth)
    assert status == 200
    assert body["key"].startswith("legacy demo")
    status, body = get(f"{legacy.base}/v1/clients/1", auth)
    assert (status, body["data"]["name"]) == (200, "Acme Solar")
    assert get(f"{legacy.base}/v1/clients", {"Authorization": f"Bearer {key[:-1]}"})[0] == 401


@needs_curl
def test_legacy_curl_lines_work_when_pasted(legacy: Served) -> None:
    with_key, without_key = legacy.curl_lines()
    assert run_pasted(with_key)["success"] is True
    assert run_pasted(without_key)["error"]["code"] == "UNAUTHORIZED"


def test_running_again_on_the_same_port_replaces_the_demo_key(tmp_path: Path) -> None:
    port = free_port()
    with serve("examples.legacy_app", tmp_path, port=port) as first:
        pass
    with serve("examples.legacy_app", tmp_path, port=port) as second:
        assert first.keys != second.keys
        old, new = first.keys[0], second.keys[0]
        assert get(f"{second.base}/v1/clients", {"Authorization": f"Bearer {old}"})[0] == 401
        assert get(f"{second.base}/v1/clients", {"Authorization": f"Bearer {new}"})[0] == 200


def test_flask_example_prints_two_keys_once(flask_example: Served) -> None:
    reader, admin = flask_example.keys
    assert reader != admin
    assert "shown once" in flask_example.output
    assert re.search(r"demo reader \(port \d+\) \(clients:read\)", flask_example.output)


@needs_curl
def test_flask_curl_lines_answer_as_documented(flask_example: Served) -> None:
    read, forbidden_write, write, delete, no_key = flask_example.curl_lines()
    listed = run_pasted(read)
    assert listed["success"] is True
    assert [row["name"] for row in listed["data"]] == ["Acme Solar", "Sunrise Homes"]
    assert run_pasted(forbidden_write)["error"]["code"] == "FORBIDDEN"
    assert run_pasted(write)["data"]["name"] == "Nova"
    assert run_pasted(delete) == {"success": True}
    assert run_pasted(no_key)["error"]["code"] == "UNAUTHORIZED"


def test_flask_example_over_http(flask_example: Served) -> None:
    reader, admin = flask_example.keys
    base = f"{flask_example.base}/v1/clients"
    assert get(f"{flask_example.base}/health") == (200, {"status": "ok"})
    status, body = get(f"{base}/2", {"Authorization": f"Bearer {reader}"})
    assert (status, body["data"]["name"]) == (200, "Sunrise Homes")
    status, body = get(f"{base}/2", {"Authorization": f"Bearer {reader}"}, method="DELETE")
    assert (status, body["error"]["code"]) == (403, "FORBIDDEN")
    assert get(f"{base}/2", {"Authorization": f"Bearer {admin}"}, method="DELETE")[0] == 200
    assert get(f"{base}/2", {"Authorization": f"Bearer {admin}"})[0] == 404


def apikey(tmp_path: Path, *args: str) -> str:
    """Run the installed ``apikey`` command on the example's database."""
    return run_apikey(f"sqlite:///{tmp_path / 'example.db'}", *args)


def new_key(output: str) -> str:
    keys = re.findall(r"^\s+(sk_(?:test|live)_[A-Za-z0-9_]+)$", output, re.MULTILINE)
    assert len(keys) == 1
    return str(keys[0])


def test_seed_lifecycle_with_the_readme_commands(flask_example: Served, tmp_path: Path) -> None:
    url = f"{flask_example.base}/v1/clients"

    def status(key: str) -> int:
        return get(url, {"Authorization": f"Bearer {key}"})[0]

    apikey(tmp_path, "init-db")
    test_key = new_key(
        apikey(tmp_path, "create", "--name", "billing test", "--type", "test",
               "--scope", "clients:read")
    )  # fmt: skip
    live_key = new_key(
        apikey(tmp_path, "create", "--name", "billing live", "--type", "live",
               "--scope", "clients:read", "--scope", "clients:write", "--expires-in", "30d")
    )  # fmt: skip
    listed = apikey(tmp_path, "list")
    assert "billing test" in listed
    assert "billing live" in listed
    assert "expiring" not in listed  # states are active, expired and revoked
    assert status(test_key) == 200
    assert status(live_key) == 200

    live_id = live_key[8:22]
    rotated = new_key(apikey(tmp_path, "rotate", live_id, "--grace", "2s"))
    assert status(live_key) == 200
    assert status(rotated) == 200
    time.sleep(2.2)
    assert status(live_key) == 401
    assert status(rotated) == 200

    apikey(tmp_path, "revoke", test_key[8:22], "--yes")
    assert status(test_key) == 401

    rows: list[dict[str, t.Any]] = []
    for _ in range(50):  # the server writes usage rows within a second
        rows = json.loads(apikey(tmp_path, "usage", live_id, "--json"))
        if sum(row["requests"] for row in rows) == 3:
            break
        time.sleep(0.2)
    # Newest first; the two 200s share a row when they came in one minute.
    assert [row["status"] for row in rows for _ in range(row["requests"])] == [401, 200, 200]
    chart = apikey(tmp_path, "usage", live_id)
    assert "Requests per day" in chart
    assert "2xx 2" in chart


ACCOUNT_RE = re.compile(r"^\s+account: (\w+)\s+password: (\S+)$", re.MULTILINE)


def test_flask_example_prints_its_dashboard_and_accounts_that_sign_in(
    flask_example: Served,
) -> None:
    accounts = dict(ACCOUNT_RE.findall(flask_example.output))
    assert set(accounts) == {"alice", "bob"}
    assert f"{flask_example.base}/settings/api-keys" in flask_example.output
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())

    def sign_in(password: str) -> tuple[int, str]:
        with browser.open(f"{flask_example.base}/login", timeout=10) as page:
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.read().decode())
        assert token
        form = urllib.parse.urlencode(
            {"csrf_token": token.group(1), "username": "alice", "password": password}
        ).encode()
        try:
            with browser.open(f"{flask_example.base}/login", form, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode()

    status, page = sign_in(accounts["bob"])
    assert status == 401
    assert "Wrong name or password." in page
    status, page = sign_in(accounts["alice"])
    assert status == 200
    assert "Signed in as <strong>alice</strong>" in page
    assert "Generate New Key" in page


def test_flask_example_throttles_failed_sign_ins_before_checking_a_password(
    flask_example: Served,
) -> None:
    accounts = dict(ACCOUNT_RE.findall(flask_example.output))
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())

    def sign_in(name: str, password: str) -> tuple[int, str, str | None]:
        with browser.open(f"{flask_example.base}/login", timeout=10) as page:
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.read().decode())
        assert token
        form = urllib.parse.urlencode(
            {"csrf_token": token.group(1), "username": name, "password": password}
        ).encode()
        try:
            with browser.open(f"{flask_example.base}/login", form, timeout=10) as answer:
                return answer.status, answer.read().decode(), None
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode(), error.headers.get("Retry-After")

    # Ten failures from this address, over names known and unknown, then 429.
    statuses = [sign_in(("alice", "nobody")[n % 2], "wrong")[0] for n in range(10)]
    assert statuses == [401] * 10
    status, page, retry_after = sign_in("bob", accounts["bob"])
    assert status == 429
    assert "Too many failed sign-ins: try again in" in page
    assert retry_after is not None
    assert 1 <= int(retry_after) <= 60


def test_flask_example_throttles_failed_sign_ins_per_account_from_any_address(
    tmp_path: Path,
) -> None:
    from werkzeug.security import generate_password_hash

    from examples.flask_app import LOGIN_FAILURES_PER_ACCOUNT, create_app

    accounts = {"alice": generate_password_hash("a-pw"), "bob": generate_password_hash("b-pw")}
    app = create_app(
        {
            "APIKEY_DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}",
            "EXAMPLE_ACCOUNTS": accounts,
            "SECRET_KEY": "test",
        }
    )

    def sign_in(name: str, password: str, address: str) -> int:
        client = app.test_client()
        page = client.get("/login", environ_base={"REMOTE_ADDR": address})
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
        assert token
        form = {"csrf_token": token.group(1), "username": name, "password": password}
        answer = client.post("/login", data=form, environ_base={"REMOTE_ADDR": address})
        return answer.status_code

    limit, _ = LOGIN_FAILURES_PER_ACCOUNT
    assert [sign_in("alice", "wrong", f"10.0.0.{n}") for n in range(limit)] == [401] * limit
    # Alice's account is held from every address, her right password too;
    # bob signs in from the same new address.
    assert sign_in("alice", "a-pw", "10.0.1.1") == 429
    assert sign_in("bob", "b-pw", "10.0.1.1") == 303
