"""What the benchmarks share: percentiles, a minimal keep-alive HTTP/1.1 client (the same on the
Firebox side and the baseline side, so the client costs the same on both), and starting a
Firebox server on a free port."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

READY_PREFIX = "Firebox ready at "
T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results"
# The percentiles kept of a latency distribution (its CDF, for the plots): 0..100 by 1, and the tail.
CDF_POINTS = [*range(100), 99.5, 99.9, 100]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": statistics.median(values), "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "max_ms": max(values), "mean_ms": statistics.fmean(values)}


def cdf(values: list[float]) -> list[list[float]]:
    """[[percentile, value], ...] at CDF_POINTS: a distribution in ~100 numbers, whatever its size."""
    return [[p, round(percentile(values, p), 4)] for p in CDF_POINTS]


def samples(values: list[float]) -> list[float]:
    """Raw timings, rounded to 0.1 us, for the JSON (and the plots' histograms)."""
    return [round(v, 4) for v in values]


def write_results(results: dict[str, Any], out: str | None, prefix: str) -> Path:
    """Write `results` to `out`, or to bench/results/<prefix>-<time>.json; returns the path."""
    path = Path(out) if out else RESULTS / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path


def out_argument(parser: argparse.ArgumentParser, prefix: str) -> None:
    """Every benchmark's `--out`: the JSON file its results go to."""
    parser.add_argument("--out", help=f"the JSON file to write (default bench/results/{prefix}-<time>.json)")


def publish(results: dict[str, Any], out: str | None, prefix: str, report: Callable[[dict[str, Any]], None]) -> Path:
    """Print a benchmark's table, write its JSON (`out`, or bench/results/<prefix>-<time>.json)."""
    report(results)
    path = write_results(results, out, prefix)
    print(f"\nwrote {shown(path)}")
    return path


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _Responses(asyncio.Protocol):
    """The client side of one keep-alive connection: bytes in, one awaited response at a time.

    A Protocol, not asyncio streams, on uvloop (`run_loop`): the client shares the 2 CPUs with
    the server it measures, and streams cost it a coroutine step per header line. The client's
    CPU per request at 16 clients (alternated runs against one server, medians of 4-6): streams
    on asyncio's loop, as before, 57-77 us; streams on uvloop 43; this Protocol on asyncio's
    loop 54, on uvloop 20-31. What it no longer takes, the server it measures may use: the raw
    uvicorn baseline, which the old client held back, went from 14,300 to 20,200 requests/s."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's are not asyncio.Transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None:
            self._complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("the server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def _complete(self) -> None:
        """Hand the waiter the response at the head of the buffer, once all of it is in."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end])
        lowered = head.lower()
        length = _header(lowered, b"content-length")
        if length:
            size = int(length)
            if len(buffer) < end + 4 + size:
                return
            body = bytes(buffer[end + 4:end + 4 + size])
            del buffer[:end + 4 + size]
        elif _header(lowered, b"transfer-encoding").endswith(b"chunked"):
            parsed = _chunked(buffer, end + 4)
            if parsed is None:
                return
            body, used = parsed
            del buffer[:used]
        else:
            body = b""
            del buffer[:end + 4]
        waiter, self.waiter = self.waiter, None
        assert waiter is not None
        if not waiter.done():
            waiter.set_result((int(head[9:12]), head, body))


def _header(lowered_head: bytes, name: bytes) -> bytes:
    """The value of header `name` (lower case) in a lower-cased head, b"" if it has none."""
    at = lowered_head.find(b"\r\n" + name + b":")
    if at < 0:
        return b""
    start = at + len(name) + 3
    end = lowered_head.find(b"\r\n", start)
    return lowered_head[start:end if end >= 0 else len(lowered_head)].strip()


def _chunked(buffer: bytearray, at: int) -> tuple[bytes, int] | None:
    """A chunked body from `at`: (the body, where the response ends), or None if not all in."""
    body = bytearray()
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            return (bytes(body), trailer_end + 4) if trailer_end >= 0 else None
        if len(buffer) < start + size + 2:
            return None
        body += buffer[start:start + size]
        at = start + size + 2


class Connection:
    """A keep-alive HTTP/1.1 client connection: just enough to time requests."""

    def __init__(self, protocol: _Responses, host: str) -> None:
        self._protocol, self.host = protocol, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        # Connected here, blocking (loopback: at once), and handed over: uvloop resolves even a
        # numeric address on libuv's thread pool, which starts 4 threads that stay.
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        _, protocol = await asyncio.get_running_loop().create_connection(_Responses, sock=sock)
        return cls(protocol, f"{host}:{port}")

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        status, _, data = await self._exchange("POST", path, body, headers)
        return status, data

    async def get_json(self, path: str) -> Any:
        status, _, data = await self._exchange("GET", path, b"", None)
        if status != 200:
            raise OSError(f"GET {path}: {status}")
        return json.loads(data)

    async def exchange(
        self, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"
    ) -> tuple[int, dict[str, str], bytes]:
        status, head, data = await self._exchange(method, path, body, headers)
        answer: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            answer[name.strip().lower()] = value.strip()
        return status, answer, data

    async def _exchange(self, method: str, path: str, body: bytes,
                        headers: dict[str, str] | None) -> tuple[int, bytes, bytes]:
        protocol = self._protocol
        if protocol.lost is not None or protocol.transport is None:
            raise ConnectionError("the connection is closed") from protocol.lost
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: application/json\r\n{extra}\r\n").encode()
        waiter = protocol.waiter = asyncio.get_running_loop().create_future()
        protocol.transport.write(head + body)
        return await waiter

    async def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark's coroutine on uvloop (as the server runs), else on asyncio's own loop:
    the client shares the machine with what it measures, and costs it less there."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def start_firebox(data_dir: str, env: dict[str, str], *, wrapper: Sequence[str] = (), stderr: Any = subprocess.DEVNULL,
                  ready_s: float = 60) -> tuple[subprocess.Popen[str], int]:
    """`firebox serve` on a free port with `data_dir` (under `wrapper`, a command such as valgrind's,
    if given); returns the process and its port once it says it is ready."""
    cmd = [*wrapper, sys.executable, "-m", "firebox", "serve", "--port", "0", "--data-dir", data_dir]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("firebox exited before it was ready")
        if line.startswith(READY_PREFIX):
            return proc, int(line.rstrip().rsplit(":", 1)[1].split()[0].strip("/"))
    proc.kill()
    raise SystemExit(f"firebox did not become ready in {ready_s:g} s")


def stop_firebox(proc: subprocess.Popen[str], grace_s: float = 30) -> None:
    """Stop a server from `start_firebox`: SIGTERM (a graceful stop), SIGKILL after `grace_s`."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def host_probe_ms(samples: int = 5) -> float:
    """How long a fixed piece of pure-Python work takes on this thread's CPU (the median of
    `samples`, ms of CPU time, not wall time): the same work, so any change is the host's. On the
    2-core development VM it moved between about 17 and 29 ms from one second to the next with
    the machine otherwise idle (the hypervisor's doing: a sibling hyperthread, the clock), and
    every CPU cost of a benchmark moves with it. Benchmarks print it beside rows that the host's
    speed moves most, so that two runs can be compared for what the code did."""
    timings = []
    for _ in range(samples):
        began = time.thread_time_ns()
        total = 0
        for i in range(300_000):
            total += i * i
        timings.append((time.thread_time_ns() - began) / 1e6)
    return statistics.median(timings)


def busy_seconds() -> float:
    """Seconds the whole machine has been busy (all CPUs, /proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """A process's minor page faults so far (/proc/<pid>/stat: each copy-on-write copy is one),
    0 when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    except (OSError, ValueError, IndexError):
        return 0


def on_cpu_ns(pid: int, *, only_thread: int | None = None, skip_thread: int | None = None) -> int:
    """Nanoseconds on a CPU of `pid`'s threads (one thread, or all but one); 0 when it is gone."""
    total = 0
    try:
        threads = [only_thread] if only_thread is not None else [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return 0
    for tid in threads:
        if tid == skip_thread:
            continue
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def pss_kb(pid: int) -> int:
    """A process's proportional set size (shared pages divided among their sharers), 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
