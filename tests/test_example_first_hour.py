"""The example as a newcomer meets it: `make run` twice, on another port,
the command line on the same database, one JSON style, an OpenAPI document
that the running server keeps to."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from examples._demo import port_is_free

from .servers import BIN, free_port
from .test_examples import ROOT, Served, example_env, get, serve


def raw(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def test_a_second_run_on_a_busy_port_says_so_and_breaks_nothing(tmp_path: Path) -> None:
    port = free_port()
    with (
        serve("examples.flask_app", tmp_path, port=port) as first,
        socket.socket() as next_one,
    ):
        with contextlib.suppress(OSError):  # taken already: as good
            next_one.bind(("127.0.0.1", port + 1))
            next_one.listen()
        suggested = next(p for p in range(port + 2, port + 100) if port_is_free("127.0.0.1", p))
        second = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "examples.flask_app", "--port", str(port)],
            cwd=ROOT,
            env=example_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert f"Port {port}" in second.stderr
        assert f"make run PORT={suggested}" in second.stderr  # a port that is free
        assert "Traceback" not in second.stderr
        assert "sk_test_" not in second.stdout
        reader, _ = first.keys
        status, _ = get(f"{first.base}/v1/clients", {"Authorization": f"Bearer {reader}"})
        assert status == 200


def test_a_run_on_another_port_keeps_the_first_runs_keys(tmp_path: Path) -> None:
    with (
        serve("examples.flask_app", tmp_path) as first,
        serve("examples.flask_app", tmp_path) as second,
    ):
        for served in (first, second):
            for key in (*first.keys, *second.keys):
                status, _ = get(f"{served.base}/v1/clients", {"Authorization": f"Bearer {key}"})
                assert status == 200


def test_make_run_takes_a_port() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "PORT ?= 5000" in makefile
    assert "examples.flask_app --port $(PORT)" in makefile


def test_the_printed_export_line_points_the_command_line_at_the_examples_database(
    tmp_path: Path,
) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    with serve("examples.flask_app", tmp_path, cwd=tmp_path, database=False) as served:
        (line,) = [x.strip() for x in served.output.splitlines() if "export " in x]
        url = line.removeprefix("export APIKEY_DATABASE_URL=")
        assert url == f"sqlite:///{tmp_path / 'instance' / 'apikeys.db'}"
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        env = {**os.environ, "APIKEY_DATABASE_URL": url}
        listed = subprocess.run(  # noqa: S603
            [str(BIN / "apikey"), "list"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "demo reader" in listed.stdout
        assert list(elsewhere.iterdir()) == []


def test_every_body_of_the_example_has_the_errors_style(flask_example: Served) -> None:
    reader, admin = flask_example.keys
    base = flask_example.base
    auth = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    answers = [
        raw(f"{base}/health"),
        raw(f"{base}/v1/clients", {"Authorization": f"Bearer {reader}"}),
        raw(f"{base}/v1/clients/9999", auth),
        raw(f"{base}/nowhere"),
        raw(f"{base}/health", method="DELETE"),
        raw(f"{base}/v1/clients"),
        raw(f"{base}/v1/clients", auth, method="POST"),
    ]
    for status, body in answers:
        assert body == json.dumps(json.loads(body)).encode(), body  # json.dumps' style
        document = json.loads(body)
        if status >= 400:
            assert set(document) == {"success", "error"}
            assert document["success"] is False
            assert set(document["error"]) == {"code", "message"}
    assert json.loads(answers[2][1])["error"]["code"] == "NOT_FOUND"
    assert json.loads(answers[4][1])["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert json.loads(answers[6][1])["error"]["code"] == "BAD_REQUEST"


@pytest.fixture
def flask_example(tmp_path: Path) -> t.Iterator[Served]:
    with serve("examples.flask_app", tmp_path) as served:
        yield served


def test_the_openapi_document_declares_keys_scopes_and_refusals(flask_example: Served) -> None:
    status, document = get(f"{flask_example.base}/openapi.json")
    assert status == 200
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    operations = document["paths"]
    assert operations["/v1/clients"]["get"]["security"] == [{"ApiKey": ["clients:read"]}]
    assert operations["/v1/clients"]["post"]["security"] == [{"ApiKey": ["clients:write"]}]
    assert operations["/v1/clients/{client_id}"]["delete"]["security"] == [
        {"ApiKey": ["clients:delete"]}
    ]
    assert operations["/health"]["get"]["security"] == []
    for status_code in ("401", "403", "429", "503"):
        ref = operations["/v1/clients"]["get"]["responses"][status_code]["$ref"]
        name = ref.rsplit("/", 1)[1]
        assert name in document["components"]["responses"]


@pytest.mark.slow
@pytest.mark.parametrize("who", ["no key", "reader", "admin"])
def test_schemathesis_finds_no_answer_that_breaks_the_document(
    flask_example: Served, who: str, tmp_path: Path
) -> None:
    schemathesis = BIN / "schemathesis"
    if not schemathesis.exists():
        pytest.skip("schemathesis is not installed (the test dependency group has it)")
    headers = []
    if who != "no key":
        key = dict(zip(("reader", "admin"), flask_example.keys, strict=True))[who]
        headers = ["-H", f"Authorization: Bearer {key}"]
    result = subprocess.run(  # noqa: S603
        [
            str(schemathesis),
            "run",
            f"{flask_example.base}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_headers_conformance,response_schema_conformance",
            "--max-examples",
            "30",
            "--workers",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "1",
            *headers,
        ],
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert re.search(r"\d+ generated, \d+ passed\n", output), output[-8000:]
    # Each caller was refused exactly where the document says it must be:
    # everywhere without a key, on writes and deletes with the reader's.
    refused = {"no key": 4, "reader": 2, "admin": 0}[who]
    if refused:
        assert f"Authentication failed: {refused} operations returned only 401/403" in output
    else:
        assert "Authentication failed" not in output, output[-8000:]
