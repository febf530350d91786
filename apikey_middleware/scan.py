"""Finding keys in files: what ``apikey scan`` and the pre-commit hook run.

A string of the key format is a find only if its checksum holds
(:func:`~apikey_middleware.keys.parse_key`), so a random look-alike is not
reported: about one string in 2**35 of the right shape passes by chance.
Nothing here touches a database; :mod:`apikey_middleware.leaks` looks the
finds up.

What is not found: a key split across lines or strings, one that is
encoded (base64, URL-encoding, UTF-16, which reads as binary), and any key
in a file skipped as binary (a NUL byte in its first 8 KiB, as git decides)
or as larger than ``max_size``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import typing as t
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ._checks import integer
from .keys import CHECKSUM_LENGTH, ID_LENGTH, SECRET_LENGTH, ParsedKey, display_prefix, parse_key

#: Files larger than this are skipped unless told otherwise.
DEFAULT_MAX_SIZE = 10 * 1024 * 1024
#: Folders never walked into: version control data.
SKIPPED_FOLDERS = frozenset({".git", ".hg", ".svn"})
# git's own test for binary content: a NUL byte near the start.
_SNIFF = 8192

# Leading literal "sk_" lets the regex engine skip quickly to candidates;
# the checksum then decides.
_CANDIDATE_RE = re.compile(
    rb"sk_(?:test|live)_[a-z0-9]{%d}_[A-Za-z0-9]{%d}" % (ID_LENGTH, SECRET_LENGTH + CHECKSUM_LENGTH)
)
_TEXT_CANDIDATE_RE = re.compile(_CANDIDATE_RE.pattern.decode("ascii"))


@dataclass(frozen=True, slots=True)
class Find:
    """A key found in a file: where, and which key (the key kept out of ``repr()``).

    :attr path: the file, as given or as met while walking a folder.
    :attr line: 1-based line number.
    :attr column: 1-based byte offset in that line.
    """

    path: str
    line: int
    column: int
    key: ParsedKey = field(repr=False)

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @property
    def key_type(self) -> str:
        return self.key.key_type


@dataclass
class ScanStats:
    """What a scan read and what it skipped."""

    files: int = 0
    bytes: int = 0
    binary: int = 0
    too_large: int = 0
    unreadable: int = 0


def find_keys(data: bytes) -> Iterator[tuple[int, int, ParsedKey]]:
    """``(line, column, key)`` of each key in ``data`` whose checksum holds."""
    # Lines and columns are counted from the last find on, never from the
    # start again: a long line full of keys costs its length, not its square.
    line, counted_to, line_start = 1, 0, 0
    for match in _CANDIDATE_RE.finditer(data):
        parsed = parse_key(match.group().decode("ascii"))
        if parsed is None:
            continue
        start = match.start()
        newlines = data.count(b"\n", counted_to, start)
        if newlines:
            line += newlines
            line_start = data.rfind(b"\n", counted_to, start) + 1
        counted_to = start
        yield line, start - line_start + 1, parsed


class Scanner:
    """Walks files and folders for keys, counting what it reads and skips.

    :param max_size: files larger than this many bytes are skipped.
    :param exclude: glob patterns (``fnmatch``) matched against each file and
        folder name met while walking, such as ``.venv`` or ``*.min.js``.

    Symbolic links met while walking are not followed (a link loop cannot
    make a scan endless); a path given explicitly is read even if it is one.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE, exclude: Iterable[str] = ()) -> None:
        self.max_size = integer("max_size", max_size)
        self.exclude = tuple(exclude)
        self.stats = ScanStats()

    def scan(self, paths: Iterable[str]) -> Iterator[Find]:
        """The finds in ``paths`` (files, or folders walked recursively)."""
        for path in paths:
            if os.path.isdir(path):
                yield from self._walk(path)
            elif os.path.isfile(path):
                yield from self.scan_file(path)
            else:
                # A named pipe or a device would block or never end.
                self.stats.unreadable += 1

    def _excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.exclude)

    def _walk(self, top: str) -> Iterator[Find]:
        folders = [top]
        while folders:
            folder = folders.pop()
            try:
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda entry: entry.name)
            except OSError:
                self.stats.unreadable += 1
                continue
            subfolders = []
            for entry in entries:
                if entry.name in SKIPPED_FOLDERS or self._excluded(entry.name):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        yield from self.scan_file(entry.path)
                except OSError:
                    self.stats.unreadable += 1
            # Reversed onto the stack, so folders are walked in name order.
            folders.extend(reversed(subfolders))

    def scan_file(self, path: str) -> Iterator[Find]:
        """The finds in one file, unless it is binary, too large or unreadable."""
        stats = self.stats
        try:
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > self.max_size:
                    stats.too_large += 1
                    return
                data = file.read(_SNIFF)
                if b"\0" in data:
                    stats.binary += 1
                    return
                if len(data) == _SNIFF:
                    # Read again whole, into one buffer of the file's size
                    # (not the sniff plus a copy, nor the size limit's).
                    file.seek(0)
                    data = file.read(size + 1)
                    if len(data) > size:  # it grew meanwhile
                        data += file.read(self.max_size + 1 - len(data))
        except OSError:
            stats.unreadable += 1
            return
        if len(data) > self.max_size:
            stats.too_large += 1
            return
        stats.files += 1
        stats.bytes += len(data)
        shown = os.path.normpath(path)
        for line, column, key in find_keys(data):
            yield Find(shown, line, column, key)


def _mask(match: re.Match[str]) -> str:
    parsed = parse_key(match.group())
    if parsed is None:
        return match.group()
    return display_prefix(parsed.key_type, parsed.key_id)


def printable(text: str) -> str:
    """``text`` safe to print: keys shortened to their display form, control
    characters and undecodable bytes escaped."""
    if "sk_" in text:
        text = _TEXT_CANDIDATE_RE.sub(_mask, text)
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def unique_keys(finds: Iterable[Find]) -> list[ParsedKey]:
    """The distinct keys among ``finds``, in order of first appearance."""
    seen: dict[str, ParsedKey] = {}
    for find in finds:
        seen.setdefault(find.key.key, find.key)
    return list(seen.values())


_SIZE_RE = re.compile(r"(\d{1,12})([KMG]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """``500K``, ``10M``, ``1G`` or a number of bytes.

    :raises ValueError: anything else, or zero.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a size such as 500K, 10M or 1G")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def find_json(find: Find, state: str | None, revoked_now: bool = False) -> dict[str, t.Any]:
    """A find as ``apikey scan --json`` prints it (``state`` ``None``: not looked up)."""
    return {
        "path": printable(find.path),
        "line": find.line,
        "column": find.column,
        "key_id": find.key_id,
        "key_type": find.key_type,
        "state": state,
        "revoked_now": revoked_now,
    }


def find_line(find: Find, state: str | None, revoked_now: bool = False) -> str:
    """A find as ``apikey scan`` prints it: ``path:line:column: type key id state``."""
    line = f"{printable(find.path)}:{find.line}:{find.column}: {find.key_type} key {find.key_id}"
    if state is not None:
        line += f" {state}"
    return line + (", revoked now" if revoked_now else "")


def stats_line(finds: int, stats: ScanStats, max_size: int) -> str:
    """The closing summary of a scan."""
    return (
        f"{finds} key(s) found; {stats.files} file(s) read ({stats.bytes / 1e6:.1f} MB),"
        f" skipped {stats.binary} binary, {stats.too_large} larger than {max_size:,} bytes,"
        f" {stats.unreadable} unreadable."
    )
