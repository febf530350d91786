"""``apikey scan``: files and megabytes per second, on this checkout and a generated tree.

The figures are for the scanner itself (walking, reading, the regex and the
checksum of each candidate), as ``apikey scan --offline`` runs it; a scan
with the database adds one query and one hash check per distinct key found.

The generated tree is made in a temporary folder, deleted afterwards. Of its
bytes, about:

- 75 % source-like text files of 4 to 64 KB (lines of words, numbers and
  ``sk_``-prefixed identifiers that are not keys), one file in 40 with a key;
- 10 % minified files of 1 to 4 MB, one line each, some with a key;
- 10 % binary files of 64 KB to 1 MB (random bytes after a NUL; skipped
  after their first 8 KiB);
- 5 % huge text files of 12 to 24 MB (over the 10 MB default: skipped by
  size, unread).

Files just written are in the page cache: these are warm-cache figures,
the usual case for a pre-commit hook or a second run.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from apikey_middleware.keys import generate_key
from apikey_middleware.scan import Scanner

from ._table import Table

SECTION = "apikey scan --offline (warm page cache)"
ROOT = Path(__file__).resolve().parent.parent
_TOOL_FOLDERS = (
    ".venv",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "*.egg-info",
)
_VOCABULARY = """
    def return self import from class value if else for in while None True False
    request response key store token sk_live sk_test_ sk_ api_key config json dict
    list str int 0 1 42 3600 user owner scope clients:read = == ( ) [ ] { } , . : #
"""
_WORDS = _VOCABULARY.split()


def _text(rng: random.Random, size: int) -> bytes:
    lines, total = [], 0
    while total < size:
        indent = " " * rng.choice((0, 4, 8, 12))
        line = (indent + " ".join(rng.choices(_WORDS, k=rng.randint(3, 14))) + "\n").encode()
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size]


def generate(folder: Path, megabytes: int, seed: int = 16) -> dict[str, int]:
    """Write the tree described above into ``folder``; how many files of each kind."""
    rng = random.Random(seed)
    budget = megabytes * 1024 * 1024
    pool = _text(rng, 4 * 1024 * 1024)  # sliced, so writing is fast

    def text(size: int, key_chance: float) -> bytes:
        start = rng.randrange(0, len(pool) - size) if size < len(pool) else 0
        data = (pool * (size // len(pool) + 1))[start : start + size]
        if rng.random() < key_chance:
            at = rng.randrange(0, max(1, len(data) - 100))
            data = data[:at] + b' "' + generate_key("live").key.encode() + b'" ' + data[at:]
        return data

    counts = {"text": 0, "minified": 0, "binary": 0, "huge": 0}
    plan = (("text", 0.75), ("minified", 0.10), ("binary", 0.10), ("huge", 0.05))
    for kind, share in plan:
        written = 0
        while written < budget * share:
            index = counts[kind]
            sub = folder / kind / f"d{index % 50:02}"
            sub.mkdir(parents=True, exist_ok=True)
            if kind == "text":
                data = text(rng.randint(4, 64) * 1024, 1 / 40)
                name = f"module_{index}.py"
            elif kind == "minified":
                data = text(rng.randint(1, 4) * 1024 * 1024, 0.5).replace(b"\n", b";")
                name = f"bundle_{index}.min.js"
            elif kind == "binary":
                data = b"\0" + rng.randbytes(rng.randint(64, 1024) * 1024)
                name = f"blob_{index}.bin"
            else:
                data = text(rng.randint(12, 24) * 1024 * 1024, 1.0)
                name = f"dump_{index}.sql"
            (sub / name).write_bytes(data)
            written += len(data)
            counts[kind] += 1
    return counts


def _scan(path: Path, exclude: tuple[str, ...] = ()) -> tuple[float, float, int, int]:
    """One scan: seconds, megabytes read, files met, keys found."""
    scanner = Scanner(exclude=exclude)
    started = time.perf_counter()
    found = sum(1 for _ in scanner.scan([str(path)]))
    seconds = time.perf_counter() - started
    stats = scanner.stats
    met = stats.files + stats.binary + stats.too_large + stats.unreadable
    return seconds, stats.bytes / 1e6, met, found


def _measure(
    table: Table, label: str, path: Path, rounds: int, exclude: tuple[str, ...] = ()
) -> None:
    _scan(path, exclude)  # warm the page cache and the directory cache
    files_per_s, mb_per_s = [], []
    for _ in range(rounds):
        seconds, megabytes, met, found = _scan(path, exclude)
        files_per_s.append(met / seconds)
        mb_per_s.append(megabytes / seconds)
    table.figure(SECTION, f"{label}: files/s ({met:,} files, {megabytes:,.1f} MB read)",
                 files_per_s, "files/s")  # fmt: skip
    table.figure(SECTION, f"{label}: MB/s read and searched ({found} keys)", mb_per_s, "MB/s")


def run(table: Table, *, megabytes: int = 1024, rounds: int = 3) -> None:
    """This checkout without and with its tool folders, then a generated tree."""
    _measure(table, "this repository", ROOT, rounds, _TOOL_FOLDERS)
    if (ROOT / ".venv").is_dir():
        _measure(table, "this checkout with .venv", ROOT, rounds)
    folder = Path(tempfile.mkdtemp(prefix="apikey-bench-scan-"))
    try:
        started = time.perf_counter()
        counts = generate(folder, megabytes)
        made = time.perf_counter() - started
        shown = ", ".join(f"{count} {kind}" for kind, count in counts.items())
        print(f"(generated {megabytes} MB tree in {made:.0f} s: {shown} files)", flush=True)
        _measure(table, f"generated {megabytes} MB tree", folder, rounds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert not os.path.exists(folder)
