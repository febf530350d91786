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
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY_RE = re.compile(r"sk_test_[A-Za-z0-9_]+")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    base: str
    output: str

    @property
    def key(self) -> str:
        match = KEY_RE.search(self.output)
        assert match is not None, self.output
        return match.group(0)

    def curl_lines(self) -> list[str]:
        return [
            line.strip() for line in self.output.splitlines() if line.strip().startswith("curl")
        ]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextmanager
def serve(script: str, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    env = {**os.environ, "APIKEY_DATABASE_URL": f"sqlite:///{tmp_path / 'example.db'}"}
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, script, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    output = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        output.append(line)
        if line.strip().startswith("curl") and "no key" in line:
            break
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield Served(f"http://127.0.0.1:{port}", "".join(output))
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


@pytest.fixture
def legacy(tmp_path: Path) -> Iterator[Served]:
    with serve("examples/legacy_app.py", tmp_path) as served:
        yield served


def test_legacy_example_prints_a_demo_key_and_curl_lines(legacy: Served) -> None:
    assert "shown once" in legacy.output
    assert any(f'-H "Authorization: Bearer {legacy.key}"' in line for line in legacy.curl_lines())


def test_legacy_example_guards_its_routes(legacy: Served) -> None:
    assert get(f"{legacy.base}/health") == (200, {"status": "ok"})
    status, body = get(f"{legacy.base}/v1/clients")
    assert status == 401
    assert body["error"] == {"code": "UNAUTHORIZED", "message": "No API key provided"}
    auth = {"Authorization": f"Bearer {legacy.key}"}
    status, body = get(f"{legacy.base}/v1/clients", auth)
    assert status == 200
    assert body["key"] == "legacy demo"
    status, body = get(f"{legacy.base}/v1/clients/1", auth)
    assert (status, body["data"]["name"]) == (200, "Acme Solar")  # type: ignore[index]
    status, _ = get(f"{legacy.base}/v1/clients", {"Authorization": f"Bearer {legacy.key[:-1]}"})
    assert status == 401


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_printed_curl_lines_work_when_pasted(legacy: Served) -> None:
    with_key, without_key = legacy.curl_lines()
    out = subprocess.run(  # noqa: S603
        shlex.split(with_key), capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert json.loads(out)["success"] is True
    command = shlex.split(without_key.split("#")[0])
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout  # noqa: S603
    assert json.loads(out)["error"]["code"] == "UNAUTHORIZED"


def test_running_again_replaces_the_demo_key(tmp_path: Path) -> None:
    with serve("examples/legacy_app.py", tmp_path) as first:
        pass
    with serve("examples/legacy_app.py", tmp_path) as second:
        assert first.key != second.key
        assert get(f"{second.base}/v1/clients", {"Authorization": f"Bearer {first.key}"})[0] == 401
        assert get(f"{second.base}/v1/clients", {"Authorization": f"Bearer {second.key}"})[0] == 200
