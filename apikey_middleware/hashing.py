"""How keys are hashed for storage: bcrypt over a peppered HMAC-SHA-256.

bcrypt alone would do, but it reads at most 72 bytes and stops at a NUL
byte (bcrypt 5 refuses such input outright). Hashing the key first with
HMAC-SHA-256 and base64-encoding the digest gives bcrypt a fixed 44-byte
ASCII input. The HMAC key is the *pepper*: a server-side secret that is never
written to the database, so a stolen database alone does not let an attacker
test guesses offline.

bcrypt is slow on purpose, far too slow to run on every request, so
:class:`KeyHasher` remembers which (key, stored hash) pairs it has verified.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
from collections import OrderedDict

import bcrypt

#: bcrypt's cost factor when none is given.
DEFAULT_ROUNDS = 12
#: How many verified keys a hasher remembers when not told otherwise.
DEFAULT_CACHE_SIZE = 10_000

PEPPER_ENV = "APIKEY_PEPPER"


def pepper_from_environ() -> bytes | None:
    """The pepper from ``APIKEY_PEPPER``, if that is set and not empty."""
    value = os.environ.get(PEPPER_ENV)
    return value.encode("utf-8") if value else None


class _BoundedSet:
    """A set of digests that forgets the least recently used past ``maxsize``."""

    __slots__ = ("_items", "_lock", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: bytes) -> bool:
        with self._lock:
            if item not in self._items:
                return False
            self._items.move_to_end(item)
            return True

    def add(self, item: bytes) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._items[item] = None
            self._items.move_to_end(item)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)


class KeyHasher:
    """Hashes keys and verifies them, each verified key only once.

    :param rounds: bcrypt's cost factor, 4 to 31. Each step doubles the time
        of a hash; 12 takes a large part of a second on a server core.
    :param pepper: the HMAC key mixed into every hash. ``None`` uses
        ``APIKEY_PEPPER`` if set, else no pepper (an empty HMAC key).
    :param cache_size: how many verified (key, hash) pairs to remember; 0
        runs bcrypt on every :meth:`verify`.

    The memory holds HMAC digests of the key together with its stored hash,
    under a random per-process secret: never a key, and never anything that
    stays valid once the stored hash changes.
    """

    __slots__ = ("_cache_secret", "_pepper", "_verified", "rounds")

    def __init__(
        self,
        rounds: int = DEFAULT_ROUNDS,
        pepper: bytes | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 4 <= rounds <= 31:
            raise ValueError(f"bcrypt rounds must be an integer from 4 to 31, not {rounds!r}")
        if pepper is None:
            pepper = pepper_from_environ()
        elif not isinstance(pepper, bytes):
            raise TypeError(f"pepper must be bytes, not {type(pepper).__name__}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative integer, not {cache_size!r}")
        self.rounds = rounds
        self._pepper = pepper or b""
        self._verified = _BoundedSet(cache_size)
        self._cache_secret = secrets.token_bytes(32)

    def __repr__(self) -> str:
        pepper = "set" if self._pepper else "none"
        return f"KeyHasher(rounds={self.rounds}, pepper={pepper}, cache_size={self._verified.maxsize})"

    def _prehash(self, key: str) -> bytes:
        digest = hmac.digest(self._pepper, key.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return base64.b64encode(digest)

    def hash(self, key: str) -> str:
        """Return the bcrypt hash to store for ``key``."""
        return bcrypt.hashpw(self._prehash(key), bcrypt.gensalt(self.rounds)).decode("ascii")

    def verify(self, key: str, hashed: str) -> bool:
        """Tell whether ``key`` matches the stored ``hashed``.

        bcrypt's comparison is constant time; a pair verified before is
        answered from memory. A damaged or foreign stored hash is a
        mismatch, never an exception.
        """
        try:
            memo = hmac.digest(
                self._cache_secret,
                key.encode("utf-8", "surrogatepass") + b"\0" + hashed.encode("ascii"),
                hashlib.sha256,
            )
        except UnicodeError:
            return False
        if memo in self._verified:
            return True
        try:
            ok = bcrypt.checkpw(self._prehash(key), hashed.encode("ascii"))
        except ValueError:
            return False
        if ok:
            self._verified.add(memo)
        return ok
