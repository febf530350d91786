"""The key format: how keys are made and how a presented one is checked offline.

A key looks like ``sk_live_<id>_<secret><checksum>``:

- ``sk_test_`` or ``sk_live_`` says its type;
- ``<id>`` is the public key id (14 characters of ``[a-z0-9]``), the one
  listings, logs and the command line show and the store looks up by. It is
  lower case so that a case-insensitive collation (MySQL and MariaDB's
  default) can never make two ids compare equal;
- ``<secret>`` is 28 characters of ``[A-Za-z0-9]`` from :mod:`secrets`
  (about 166 bits);
- ``<checksum>`` is 6 characters made from the first 6 bytes of SHA-256 over
  everything before it, prefix included (each byte mod 62, about 35 bits),
  so a truncated or mistyped key is refused without touching the database.

Every character is in ``[A-Za-z0-9_]``: a double-click selects the whole key
and it never needs URL-encoding.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import typing as t

#: A key's type, the word in its prefix.
KeyType = t.Literal["test", "live"]

#: The key types, in the order the command line offers them.
KEY_TYPES: tuple[KeyType, ...] = ("test", "live")

#: The prefix that starts each type of key.
PREFIXES: dict[str, str] = {"test": "sk_test_", "live": "sk_live_"}

ID_LENGTH = 14
SECRET_LENGTH = 28
CHECKSUM_LENGTH = 6
#: Every key has exactly this length (well under bcrypt's 72-byte limit).
KEY_LENGTH = len("sk_live_") + ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH

_ID_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
# byte -> alphabet[byte % 62], for bytes.translate: the checksum is on every
# request's path, and this is far quicker than a base-62 loop.
_CHECKSUM_TABLE = bytes(ord(_SECRET_ALPHABET[byte % 62]) for byte in range(256))

_KEY_RE = re.compile(
    rf"sk_(test|live)_([a-z0-9]{{{ID_LENGTH}}})_[A-Za-z0-9]{{{SECRET_LENGTH}}}"
    rf"[A-Za-z0-9]{{{CHECKSUM_LENGTH}}}"
)
_KEY_ID_RE = re.compile(rf"[a-z0-9]{{{ID_LENGTH}}}")


class ParsedKey(t.NamedTuple):
    """A presented key that is well formed and passed its checksum.

    It has not been checked against the store yet. The full key is kept out
    of ``repr()`` so that it cannot leak through a log line or a traceback.
    (A named tuple: one is made on every request.)
    """

    key_type: KeyType
    key_id: str
    key: str

    def __repr__(self) -> str:
        return f"ParsedKey(key_type={self.key_type!r}, key_id={self.key_id!r})"


def _checksum(body: str) -> str:
    digest = hashlib.sha256(body.encode("ascii")).digest()
    return digest[:CHECKSUM_LENGTH].translate(_CHECKSUM_TABLE).decode("ascii")


def _random_string(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_key_id() -> str:
    """Return a fresh public key id."""
    return _random_string(_ID_ALPHABET, ID_LENGTH)


def generate_key(key_type: str, key_id: str | None = None) -> ParsedKey:
    """Make a new key of ``key_type`` (``"test"`` or ``"live"``)."""
    if key_type not in PREFIXES:
        raise ValueError(
            f"key_type must be one of {', '.join(KEY_TYPES)}, not {shown_safely(key_type)}"
        )
    if key_id is None:
        key_id = new_key_id()
    elif not is_key_id(key_id):
        raise ValueError("key_id is not of the key id form")
    body = f"{PREFIXES[key_type]}{key_id}_{_random_string(_SECRET_ALPHABET, SECRET_LENGTH)}"
    return ParsedKey(t.cast(KeyType, key_type), key_id, body + _checksum(body))


def parse_key(token: str) -> ParsedKey | None:
    """Return the parsed key, or ``None`` if ``token`` cannot be a key.

    This is the gate in front of all hashing and database work: anything of
    the wrong length, with a character outside the key alphabet, with an
    unknown prefix or a bad checksum stops here. It never raises.
    """
    if len(token) != KEY_LENGTH:
        return None
    match = _KEY_RE.fullmatch(token)
    if match is None:
        return None
    split = KEY_LENGTH - CHECKSUM_LENGTH
    if not hmac.compare_digest(_checksum(token[:split]), token[split:]):
        return None
    return ParsedKey(t.cast(KeyType, match.group(1)), match.group(2), token)


def is_key_id(value: str) -> bool:
    """Tell whether ``value`` has the form of a public key id."""
    return _KEY_ID_RE.fullmatch(value) is not None


# A key prefix and enough after it to be a key, or most of one; or a key's
# body without its prefix: an id, an underscore and most of a secret (which,
# random base 62, holds upper case letters and digits).
_KEYISH_RE = re.compile(
    rf"sk_(?:test|live)_[A-Za-z0-9_]{{8,}}"
    rf"|[a-z0-9]{{{ID_LENGTH}}}_(?=[A-Za-z0-9]*[A-Z])(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{{16,}}"
)
# What a log masks besides: a key's body whose secret happens to hold no
# digit, a secret on its own, or the half of a key a slash cut off: 20 or
# more base 62 characters with capitals and digits. Too broad to refuse
# input with (a name such as "BillingServer2026Primary" is no key), right
# for text kept where operators read it.
_SECRETISH_RE = re.compile(
    rf"{_KEYISH_RE.pattern}"
    rf"|[a-z0-9]{{{ID_LENGTH}}}_(?=[A-Za-z0-9]*[A-Z])[A-Za-z0-9]{{16,}}"
    r"|(?<![A-Za-z0-9])(?=[A-Za-z0-9]*[A-Z])(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{20,}"
)
_NOT_SHOWN = "(an API key, not shown)"


def holds_key(value: str) -> bool:
    """Tell whether ``value`` holds something shaped like a key (or most of one)."""
    return _KEYISH_RE.search(value) is not None


def redact_keys(text: str) -> str:
    """``text`` with everything shaped like a key replaced by a placeholder."""
    return _KEYISH_RE.sub(_NOT_SHOWN, text)


def redact_secrets(text: str) -> str:
    """``text`` with anything that may be a key or a secret, or part of
    one, replaced by a placeholder: for what a log keeps."""
    return _SECRETISH_RE.sub(_NOT_SHOWN, text)


def shown_safely(value: str, limit: int = 60) -> str:
    """``repr()`` of a bad value for an error message, unless it may hold a key."""
    if holds_key(value) or any(prefix in value for prefix in PREFIXES.values()):
        return "(a value holding an API key, not shown)"
    return repr(value[:limit])


def key_prefix(key_type: str, key_id: str) -> str:
    """What a key starts with, as far as listings show it: ``sk_live_ab12``."""
    return f"{PREFIXES[key_type]}{key_id[:4]}"


def display_prefix(key_type: str, key_id: str) -> str:
    """The short form listings show, such as ``sk_live_ab12…``."""
    return f"{key_prefix(key_type, key_id)}…"
