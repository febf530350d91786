"""Load on 127.0.0.1: ``wrk`` where it is installed, else a bounded Python
generator (a fixed number of requests, a fixed concurrency).

Each request opens its own connection, as gunicorn's sync workers close it
after every response. Latency is from connecting to the last byte of the
response. Set ``APIKEY_BENCH_LOAD=python`` to use the Python generator even
where ``wrk`` is installed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass

#: What generates the load: ``"wrk"`` or ``"python"``.
GENERATOR = (
    "wrk" if shutil.which("wrk") and os.environ.get("APIKEY_BENCH_LOAD") != "python" else "python"
)


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float]  # seconds, or only the percentiles wrk reports
    statuses: dict[int, int]
    percentiles: dict[float, float] | None = None  # from wrk: fraction -> seconds

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        if self.percentiles is not None:
            return self.percentiles[fraction]
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50(self) -> float:
        return self.percentile(0.5) if self.percentiles else statistics.median(self.latencies)


async def _one(port: int, request: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await reader.read()
    writer.close()
    elapsed = time.perf_counter() - started
    status = int(data[9:12]) if data.startswith(b"HTTP/") else 0
    return status, elapsed


async def _load(port: int, request: bytes, total: int, concurrency: int) -> LoadResult:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status, elapsed = await _one(port, request)
            latencies.append(elapsed)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(total, time.perf_counter() - started, latencies, statuses)


def load(
    port: int, path: str, headers: dict[str, str], *, total: int, concurrency: int = 8
) -> LoadResult:
    """Send ``total`` GET requests to 127.0.0.1:``port``, ``concurrency`` at a time."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return asyncio.run(_load(port, request, total, concurrency))


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_PERCENTILE_RE = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", re.MULTILINE)


def wrk(
    port: int, path: str, headers: dict[str, str], *, seconds: int, concurrency: int = 8
) -> LoadResult:
    """``wrk`` for ``seconds`` on one thread with ``concurrency`` connections."""
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency"]
    for name, value in {**headers, "Connection": "close"}.items():
        command += ["-H", f"{name}: {value}"]
    result = subprocess.run(  # noqa: S603
        [*command, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 30,
    )
    if result.returncode != 0:
        raise SystemExit(f"wrk failed: {result.stderr.strip() or result.stdout.strip()}")
    output = result.stdout
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", output)
    if done is None:
        raise SystemExit(f"wrk printed no totals:\n{output}")
    percentiles = {
        int(share) / 100: float(value) * _UNITS[unit]
        for share, value, unit in _PERCENTILE_RE.findall(output)
    }
    requests = int(done.group(1))
    elapsed = float(done.group(2)) * _UNITS[done.group(3)]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    statuses = {0: int(failed.group(1))} if failed else {}
    return LoadResult(requests, elapsed, [], statuses, percentiles)
