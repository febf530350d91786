"""Test servers for the secret scanning endpoint, all on 127.0.0.1.

- :class:`Signer`: a P-256 key pair of the test's own, signing as GitHub does
  (base64 of a DER ECDSA signature with SHA-256 over the raw body);
- :class:`KeysServer`: serves the public keys document in GitHub's shape,
  counts its hits, and can fail or hang on demand;
- :func:`served`: a WSGI app under Werkzeug's threaded server.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import threading
import typing as t
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug.serving import make_server

from apikey_middleware import SQLAlchemyKeyStore

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


class Signer:
    """A signing key pair and the identifier GitHub would give it."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.identifier = hashlib.sha256(der).hexdigest()

    @property
    def pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self.private.sign(body, ec.ECDSA(hashes.SHA256()))).decode()

    def headers(self, body: bytes) -> dict[str, str]:
        return {
            "Github-Public-Key-Identifier": self.identifier,
            "Github-Public-Key-Signature": self.sign(body),
            "Content-Type": "application/json",
        }


def keys_document(*signers: Signer) -> bytes:
    return json.dumps(
        {
            "public_keys": [
                {"key_identifier": s.identifier, "key": s.pem, "is_current": i == 0}
                for i, s in enumerate(signers)
            ]
        }
    ).encode()


class KeysServer:
    """Serves ``document`` at ``url`` until told to ``fail`` (500), ``hang``
    or ``trickle`` (a byte every half second)."""

    def __init__(self, document: bytes) -> None:
        self.document = document
        self.mode = "serve"
        self.hits = 0
        self._release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                if server.mode == "hang":
                    server._release.wait(30)
                    return
                if server.mode == "fail":
                    self.send_error(500)
                    return
                if server.mode == "trickle":  # a byte every half second
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(server.document)))
                    self.end_headers()
                    for byte in server.document[:60]:
                        if server._release.wait(0.5):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.document)))
                self.end_headers()
                self.wfile.write(server.document)

            def log_message(self, format: str, *args: t.Any) -> None:
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_port}/meta/public_keys/secret_scanning"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)


@contextmanager
def served(app: WSGIApplication) -> Iterator[str]:
    """``app`` under Werkzeug's threaded server; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def post(
    url: str, body: bytes, headers: Mapping[str, str] | None = None, method: str = "POST"
) -> tuple[int, dict[str, str], t.Any]:
    """One request on a new connection: status, headers, JSON body."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request(method, parts.path or "/", body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, dict(response.headers), json.loads(response.read() or b"null")
    finally:
        connection.close()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def snapshot(store: SQLAlchemyKeyStore) -> dict[str, t.Any]:
    """Every row of the key, leak and report tables: what a refusal must not change."""
    shown: dict[str, t.Any] = {}
    with store.engine.connect() as connection:
        for table in ("apikey_keys", "apikey_leaks", "apikey_leak_reports"):
            rows = connection.execute(sa.text(f"SELECT * FROM {table}"))  # noqa: S608
            shown[table] = sorted(tuple(map(str, row)) for row in rows)
    return shown
