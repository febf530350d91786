"""Real servers for the tests: gunicorn, and a TCP proxy that injects faults.

Everything listens on 127.0.0.1 only and stops when its ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def request(
    url: str, headers: Mapping[str, str] | None = None, method: str = "GET", timeout: float = 30
) -> tuple[int, dict[str, str], t.Any]:
    """One HTTP request on a new connection: status, headers, JSON body."""
    prepared = urllib.request.Request(url, headers=dict(headers or {}), method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.loads(error.read())


def apikey(database_url: str, *args: str) -> str:
    """Run the installed ``apikey`` command; its stdout."""
    result = subprocess.run(  # noqa: S603
        [str(BIN / "apikey"), *args],
        env={**os.environ, "APIKEY_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@dataclass
class Gunicorn:
    """A gunicorn server whose access log says which worker answered."""

    base: str
    process: subprocess.Popen[str]
    log: list[tuple[int, int, str]] = field(default_factory=list)  # (pid, status, path)

    def worker_pids(self) -> set[int]:
        return {pid for pid, _, _ in self.log}


_ACCESS_RE = re.compile(r"^ACCESS <?(\d+)>? (\d{3}) (\S*)$")


@contextmanager
def gunicorn(
    app: str, env: Mapping[str, str], *, workers: int = 2, extra: tuple[str, ...] = ()
) -> Iterator[Gunicorn]:
    """Serve ``app`` (``module:callable``) with gunicorn on a free port."""
    port = free_port()
    command = [
        str(BIN / "gunicorn"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--access-logfile",
        "-",
        "--access-logformat",
        "ACCESS %(p)s %(s)s %(U)s",
        "--graceful-timeout",
        "2",
        *extra,
        app,
    ]
    process = subprocess.Popen(  # noqa: S603
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Gunicorn(f"http://127.0.0.1:{port}", process)
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            match = _ACCESS_RE.match(line.strip())
            if match:
                server.log.append((int(match.group(1)), int(match.group(2)), match.group(3)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for_port(port)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        reader.join(timeout=5)
        assert process.stdout is not None
        process.stdout.close()
        server.output = "".join(lines)  # type: ignore[attr-defined]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a database server, until told to fail.

    - :meth:`refuse`: the port closes, as when the server is stopped;
    - :meth:`hang`: connections are accepted and then nothing answers;
    - :meth:`drop`: every open connection is cut, as by a restart;
    - :meth:`freeze`: open connections stay open but nothing more passes,
      and new ones hang, as with a frozen peer;
    - :meth:`cut_after_commit`: the next ``COMMIT`` a client sends reaches
      the server, which answers it; the answer is thrown away and the
      connection cut, as when a network fails at the worst moment;
    - :meth:`forward`: back to normal.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = "forward"
        #: How many commits :meth:`cut_after_commit` has cut off.
        self.commits_cut = 0
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._listen()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener

    def _accept_loop(self) -> None:
        while not self._stopped:
            listener = self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.mode in ("hang", "freeze"):
                with self._lock:
                    self._pairs.append((client, None))
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        sockets = [client, upstream]
        try:
            while True:
                if self.mode == "freeze":
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select(sockets, [], [], 0.05)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client and self.mode == "cut-after-commit" and b"COMMIT" in data:
                        self.mode = "forward"
                        upstream.sendall(data)
                        # The server has done it once it answers.
                        if select.select([upstream], [], [], 10)[0]:
                            upstream.recv(65536)
                        self.commits_cut += 1
                        return
                    (upstream if source is client else client).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in sockets:
                sock.close()

    def drop(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()

    def refuse(self) -> None:
        self.mode = "refuse"
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.drop()

    def hang(self) -> None:
        self.drop()
        self.mode = "hang"

    def cut_after_commit(self) -> None:
        self.mode = "cut-after-commit"

    def freeze(self) -> None:
        self.mode = "freeze"

    def forward(self) -> None:
        self.drop()
        if self._listener is None:
            self._listen()
        self.mode = "forward"

    def close(self) -> None:
        self._stopped = True
        self.refuse()


class RedisServer:
    """A ``redis-server`` of the test's own on a free port: no persistence,
    stopped, paused and started again at will (never the shared one)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen(  # noqa: S603
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        """Stop it, as a crash or a shutdown would: the port closes."""
        if self.process is not None:
            self.resume()
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def pause(self) -> None:
        """Freeze it: connections stay open and nothing answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()
