"""A bounded HTTP load generator: a fixed number of requests, a fixed concurrency.

Used when ``wrk`` is not installed. Each request opens its own connection,
as gunicorn's sync workers close it after every response. Latency is from
connecting to the last byte of the response.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float]  # seconds
    statuses: dict[int, int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)


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
