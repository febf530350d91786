"""GitHub's secret scanning signing keys: fetched, cached, and used to verify.

The keys document has the shape GitHub serves at
:data:`GITHUB_PUBLIC_KEYS_URL`: ``{"public_keys": [{"key_identifier": ...,
"key": <PEM>, "is_current": ...}]}``. Every key it lists is accepted (GitHub
signs with an older key for a while after a rotation). Work is bounded:
the document is read once per ``ttl``, at most once per ``refetch_interval``
however many requests name an unknown key identifier, and at most once per
``retry_interval`` while fetching fails, so no flood of requests can make
the server fetch it more often.
When there are no fresh keys the answer is :class:`KeysUnavailable`: the
caller refuses the request (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .._checks import number

logger = logging.getLogger("apikey_middleware")

#: Where GitHub publishes the keys that sign its secret scanning reports.
GITHUB_PUBLIC_KEYS_URL = "https://api.github.com/meta/public_keys/secret_scanning"
#: The most of the keys document read, and the most keys kept from it.
MAX_DOCUMENT_SIZE = 64 * 1024
MAX_KEYS = 32
# An identifier is a hex digest (GitHub's are 64 characters); a DER ECDSA
# P-256 signature is at most 72 bytes, 96 in base64.
_IDENTIFIER_RE = re.compile(r"[A-Za-z0-9_\-]{1,128}")
_MAX_SIGNATURE_LENGTH = 200
_SIGNATURE = ec.ECDSA(hashes.SHA256())


class KeysUnavailable(Exception):
    """The signing keys could not be fetched recently enough to trust."""


class PublicKeys:
    """The signing keys at ``url``, fetched when needed and kept for ``ttl``.

    :param url: where the keys document is (``http`` or ``https``).
    :param timeout: seconds a whole fetch may take before it counts as
        failed (however slowly the server sends).
    :param ttl: seconds fetched keys are used before fetching again.
    :param refetch_interval: the least seconds between two fetches for an
        unknown key identifier.
    :param retry_interval: the least seconds between two tries after a fetch
        failed; meanwhile, without fresh keys, requests are refused.
    """

    def __init__(
        self,
        url: str = GITHUB_PUBLIC_KEYS_URL,
        *,
        timeout: float = 3.0,
        ttl: float = 3600.0,
        refetch_interval: float = 300.0,
        retry_interval: float = 30.0,
    ) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("public_keys_url must be an http or https URL")
        self.url = url
        self.timeout = number("timeout", timeout)
        self.ttl = number("ttl", ttl)
        self.refetch_interval = number("refetch_interval", refetch_interval)
        self.retry_interval = number("retry_interval", retry_interval)
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetched_at: float | None = None
        self._tried_at: float | None = None
        self._failed = False
        # One fetch at a time; a request whose key is known never waits on it.
        self._fetching = threading.Lock()
        #: How many times the document was requested (for tests and logs).
        self.fetches = 0

    def __repr__(self) -> str:
        return f"PublicKeys({self.url!r}, {len(self._keys)} keys)"

    def verify(self, identifier: str, signature: str, body: bytes) -> bool:
        """Whether ``signature`` (base64 DER) over ``body`` is by key ``identifier``.

        :raises KeysUnavailable: no fresh keys to check against.
        """
        if not _IDENTIFIER_RE.fullmatch(identifier) or len(signature) > _MAX_SIGNATURE_LENGTH:
            return False
        try:
            der = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        key = self.key(identifier)
        if key is None:
            return False
        try:
            key.verify(der, body, _SIGNATURE)
        except InvalidSignature:
            return False
        return True

    def key(self, identifier: str) -> ec.EllipticCurvePublicKey | None:
        """The key named ``identifier``, or ``None`` if the document has none.

        :raises KeysUnavailable: no fresh keys to look in.
        """
        now = time.monotonic()
        keys = self._keys
        if self._fresh(now) and identifier in keys:
            return keys[identifier]
        tried = self._tried_at
        if tried is None:
            due = True
        elif self._fresh(now):  # an identifier the document did not have
            due = now - tried >= self.refetch_interval
        elif self._failed:
            due = now - tried >= self.retry_interval
        else:  # past their ttl
            due = True
        # One fetch at a time: the others wait for it (a fetch ends within
        # its timeout), then use what it got instead of fetching again.
        if due and self._fetching.acquire(timeout=self.timeout + 1.0):
            try:
                if self._tried_at == tried:
                    self._refresh(now)
            finally:
                self._fetching.release()
        if not self._fresh(time.monotonic()):
            raise KeysUnavailable
        return self._keys.get(identifier)

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self.ttl

    def _refresh(self, now: float) -> None:
        self._tried_at = now
        self.fetches += 1
        try:
            keys = self._fetch()
        except Exception as error:  # whatever the document or the server did
            # A failed fetch keeps the keys there were, until their ttl ends.
            self._failed = True
            logger.warning(
                "cannot fetch the secret scanning public keys from %s: %s",
                self.url,
                type(error).__name__,
            )
            return
        self._failed = False
        self._keys = keys
        self._fetched_at = time.monotonic()

    def _fetch(self) -> dict[str, ec.EllipticCurvePublicKey]:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked
            self.url,
            headers={"Accept": "application/json", "User-Agent": "apikey_middleware"},
        )
        deadline = time.monotonic() + self.timeout
        data = b""
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            while len(data) <= MAX_DOCUMENT_SIZE:
                if time.monotonic() > deadline:
                    raise TimeoutError("the keys document took too long")
                chunk = response.read1(MAX_DOCUMENT_SIZE + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        if len(data) > MAX_DOCUMENT_SIZE:
            raise ValueError("the keys document is too large")
        document = json.loads(data)
        entries = document.get("public_keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError("the keys document has no public_keys list")
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for entry in entries[:MAX_KEYS]:
            if not isinstance(entry, dict):
                continue
            identifier, pem = entry.get("key_identifier"), entry.get("key")
            if not isinstance(identifier, str) or not isinstance(pem, str):
                continue
            key = serialization.load_pem_public_key(pem.encode("ascii", "replace"))
            if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
                keys[identifier] = key
        if not keys:
            raise ValueError("the keys document has no ECDSA P-256 key")
        return keys
