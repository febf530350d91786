"""What a release ships: one version, the licence, the distributions as built."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from apikey_middleware.cli import main

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def test_version_is_read_from_the_installed_metadata_of_pyproject() -> None:
    assert importlib.metadata.version("apikey_middleware") == VERSION


def test_apikey_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"apikey, version {VERSION}\n"


def test_changelog_has_a_section_for_the_version() -> None:
    changes = (ROOT / "CHANGES.rst").read_text()
    assert f"\nVersion {VERSION}\n" in changes


def test_pre_commit_runs_the_ruff_that_the_lint_group_pins() -> None:
    (pinned,) = [
        requirement.removeprefix("ruff==")
        for requirement in PYPROJECT["dependency-groups"]["lint"]
        if isinstance(requirement, str) and requirement.startswith("ruff")
    ]
    config = (ROOT / ".pre-commit-config.yaml").read_text()
    assert re.search(r"repo: https://github.com/astral-sh/ruff-pre-commit\n\s+rev: (\S+)", config)
    assert re.findall(r"rev: (\S+)", config) == [f"v{pinned}"]


def run(*args: str | Path, cwd: Path, stderr: bool = False) -> str:
    """What the command printed (with ``stderr``, its warnings after)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    process = subprocess.run(  # noqa: S603 - our own interpreter and paths
        [str(arg) for arg in args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    return process.stdout + process.stderr if stderr else process.stdout


@pytest.mark.slow
def test_built_distributions_install_and_run_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=tmp_path, stderr=True)
    # Every directory of the package is one, data directories too.
    assert "Package would be ignored" not in built
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")

    with tarfile.open(sdist) as archive:
        in_sdist = {name.partition("/")[2] for name in archive.getnames()}
    assert {
        "LICENSE",
        "CHANGES.rst",
        "README.md",
        "apikey_middleware/py.typed",
        "docs/conf.py",
        "docs/index.md",
        "tests/conftest.py",
        "examples/flask_app.py",
        "benchmarks/__main__.py",
    } <= in_sdist
    assert not [name for name in in_sdist if name.startswith(("docs/_build", "docs/api/"))]
    assert not [name for name in in_sdist if "__pycache__" in name or name.endswith(".pyc")]

    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        metadata = archive.read(f"apikey_middleware-{VERSION}.dist-info/METADATA").decode()
    assert "apikey_middleware/py.typed" in in_wheel
    dashboard = "apikey_middleware/dashboard/"
    assert {
        f"{dashboard}templates/apikey_dashboard/layout.html",
        f"{dashboard}templates/apikey_dashboard/created.html",
        f"{dashboard}static/dashboard.css",
        f"{dashboard}static/dashboard.js",
        f"{dashboard}static/favicon.svg",
    } <= in_wheel
    assert f"apikey_middleware-{VERSION}.dist-info/licenses/LICENSE" in in_wheel
    assert {name.split("/")[0] for name in in_wheel} == {
        "apikey_middleware",
        f"apikey_middleware-{VERSION}.dist-info",
    }
    assert "License-Expression: MIT" in metadata.splitlines()

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python, apikey = venv / "bin" / "python", venv / "bin" / "apikey"
    run(python, "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)
    where = run(
        python,
        "-c",
        "import importlib.resources, apikey_middleware;"
        "print(apikey_middleware.__file__);"
        "print(importlib.resources.files('apikey_middleware').joinpath('py.typed').is_file())",
        cwd=tmp_path,
    ).split()
    assert Path(where[0]).is_relative_to(venv)
    assert where[1] == "True"
    assert run(apikey, "--version", cwd=tmp_path) == f"apikey, version {VERSION}\n"
    # The runtime dependencies are declared: the command line works from the wheel alone.
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    run(apikey, "--database-url", url, "init-db", cwd=tmp_path)
    assert "sk_test_" in run(apikey, "--database-url", url, "create", "--name", "w", cwd=tmp_path)
