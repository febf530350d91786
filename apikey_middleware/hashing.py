"""How keys are hashed for storage: bcrypt over a peppered HMAC-SHA-256.

bcrypt alone would do, but it reads at most 72 bytes and stops at a NUL
byte (bcrypt 5 refuses such input outright). Hashing the key first with
HMAC-SHA-256 and base64-encoding the digest gives bcrypt a fixed 44-byte
ASCII input. The HMAC key is the *pepper*: a server-side secret that is never
written to the database, so a stolen database alone does not let an attacker
test guesses offline.

Beside the bcrypt hash the store keeps a *check value*: the first
:data:`CHECK_BYTES` bytes of another HMAC of the key, under a key derived
from the pepper. It is compared first, so a wrong secret for a real key id
is refused for the price of one HMAC instead of one bcrypt: a flood of
them cannot take a server's workers. At 48 bits it cannot stand in for the
hash: a guess passes it once in 2**48 tries, and it leaves 118 of the key's
166 random bits free, so only bcrypt can confirm a key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import bcrypt

from ._checks import integer

#: bcrypt's cost factor when none is given.
DEFAULT_ROUNDS = 12

PEPPER_ENV = "APIKEY_PEPPER"

#: Bytes of the check value kept beside each hash (hex in the database).
CHECK_BYTES = 6
_CHECK_CONTEXT = b"apikey_middleware key check v1"
_FINGERPRINT_CONTEXT = b"apikey_middleware pepper fingerprint v1"


def pepper_fingerprint(pepper: bytes) -> str:
    """A keyed fingerprint of ``pepper`` (of no pepper, for ``b""``), kept in
    the database so that a store with another pepper is refused. It tells
    no more about the pepper than a key's check value already does."""
    return hmac.digest(pepper, _FINGERPRINT_CONTEXT, hashlib.sha256)[:16].hex()


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

    __slots__ = ("_check_key", "_pepper", "rounds")

    def __init__(self, rounds: int = DEFAULT_ROUNDS, pepper: bytes | None = None) -> None:
        integer("bcrypt rounds", rounds, low=4, high=31)
        if pepper is None:
            pepper = pepper_from_environ()
        elif not isinstance(pepper, bytes):
            raise TypeError(f"pepper must be bytes, not {type(pepper).__name__}")
        self.rounds = rounds
        self._pepper = pepper or b""
        self._check_key = hmac.digest(self._pepper, _CHECK_CONTEXT, hashlib.sha256)

    def __repr__(self) -> str:
        return f"KeyHasher(rounds={self.rounds}, pepper={'set' if self._pepper else 'none'})"

    @property
    def peppered(self) -> bool:
        """Whether a pepper is mixed into the hashes."""
        return bool(self._pepper)

    def pepper_fingerprint(self) -> str:
        """The :func:`pepper_fingerprint` of this hasher's pepper."""
        return pepper_fingerprint(self._pepper)

    def _prehash(self, key: str) -> bytes:
        digest = hmac.digest(self._pepper, key.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return base64.b64encode(digest)

    def hash(self, key: str) -> str:
        """Return the bcrypt hash to store for ``key``."""
        return bcrypt.hashpw(self._prehash(key), bcrypt.gensalt(self.rounds)).decode("ascii")

    def check_value(self, key: str) -> str:
        """The short keyed fingerprint of ``key`` stored beside its hash."""
        digest = hmac.digest(self._check_key, key.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return digest[:CHECK_BYTES].hex()

    def verify(self, key: str, hashed: str) -> bool:
        """Tell whether ``key`` matches the stored ``hashed``, in constant time.

        A damaged or foreign stored hash is a mismatch, never an exception.
        """
        try:
            return bcrypt.checkpw(self._prehash(key), hashed.encode("ascii"))
        except (ValueError, UnicodeError):
            return False
