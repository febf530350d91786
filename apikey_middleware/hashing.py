"""How keys are hashed for storage: bcrypt over a peppered HMAC-SHA-256.

bcrypt alone would do, but it reads at most 72 bytes and stops at a NUL
byte (bcrypt 5 refuses such input outright). Hashing the key first with
HMAC-SHA-256 and base64-encoding the digest gives bcrypt a fixed 44-byte
ASCII input. The HMAC key is the *pepper*: a server-side secret that is never
written to the database, so a stolen database alone does not let an attacker
test guesses offline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import bcrypt

#: bcrypt's cost factor when none is given.
DEFAULT_ROUNDS = 12

PEPPER_ENV = "APIKEY_PEPPER"


def pepper_from_environ() -> bytes | None:
    """The pepper from ``APIKEY_PEPPER``, if that is set and not empty."""
    value = os.environ.get(PEPPER_ENV)
    return value.encode("utf-8") if value else None


class KeyHasher:
    """Hashes keys and verifies them against stored hashes.

    :param rounds: bcrypt's cost factor, 4 to 31. Each step doubles the time
        of a hash; 12 takes a large part of a second on a server core.
    :param pepper: the HMAC key mixed into every hash. ``None`` uses
        ``APIKEY_PEPPER`` if set, else no pepper (an empty HMAC key).
    """

    __slots__ = ("_pepper", "rounds")

    def __init__(self, rounds: int = DEFAULT_ROUNDS, pepper: bytes | None = None) -> None:
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 4 <= rounds <= 31:
            raise ValueError(f"bcrypt rounds must be an integer from 4 to 31, not {rounds!r}")
        if pepper is None:
            pepper = pepper_from_environ()
        elif not isinstance(pepper, bytes):
            raise TypeError(f"pepper must be bytes, not {type(pepper).__name__}")
        self.rounds = rounds
        self._pepper = pepper or b""

    def __repr__(self) -> str:
        return f"KeyHasher(rounds={self.rounds}, pepper={'set' if self._pepper else 'none'})"

    def _prehash(self, key: str) -> bytes:
        digest = hmac.digest(self._pepper, key.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return base64.b64encode(digest)

    def hash(self, key: str) -> str:
        """Return the bcrypt hash to store for ``key``."""
        return bcrypt.hashpw(self._prehash(key), bcrypt.gensalt(self.rounds)).decode("ascii")

    def verify(self, key: str, hashed: str) -> bool:
        """Tell whether ``key`` matches the stored ``hashed``, in constant time.

        A damaged or foreign stored hash is a mismatch, never an exception.
        """
        try:
            return bcrypt.checkpw(self._prehash(key), hashed.encode("ascii"))
        except (ValueError, UnicodeError):
            return False
