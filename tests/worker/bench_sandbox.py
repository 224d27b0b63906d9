"""Measure sandbox start-up (not a test): spawn() -> first byte on the Runtime API socket.

    cd /work/main && .venv/bin/python tests/worker/bench_sandbox.py [RUNS]

Prints median and p99 for the isolated and the process backend next to a bare asyncio
subprocess running the same script (interleaved rounds), and the cost of one private network
namespace with its listening socket (median of 50). The script: python3.11 -S, connect, send 1 byte.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from firebox.worker import netns
from firebox.worker.backends import IsolatedBackend, ProcessBackend
from firebox.worker.sandbox_api import SandboxSpec

SCRIPT = """\
import os, socket
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
socket.create_connection((host, int(port))).sendall(b"!")
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def first_byte(backend, code: Path) -> float:
    """One sandbox: seconds from spawn() to the first byte on its Runtime API socket."""
    loop = asyncio.get_running_loop()
    spec = SandboxSpec(
        sandbox_id=secrets.token_hex(16), function_name="bench", version="1", runtime="python3.11",
        code_dir=code, runtime_dir=code, command=("/usr/bin/python3.11", "-S", "/var/task/s.py"),
        environment={"LANG": "C.UTF-8"}, memory_mb=128, ephemeral_storage_mb=64,
    )
    started = time.perf_counter()
    sandbox = await backend.spawn(spec)
    conn, _ = await loop.sock_accept(sandbox.runtime_api)
    assert await loop.sock_recv(conn, 1) == b"!"
    elapsed = time.perf_counter() - started
    conn.close()
    await sandbox.wait()
    await sandbox.cleanup()
    return elapsed


async def raw_baseline(code: Path) -> float:
    """The same script as a bare asyncio subprocess: no backend, no preexec_fn, no limits."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    env = {"LANG": "C.UTF-8", "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{listener.getsockname()[1]}"}
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/python3.11", "-S", str(code / "s.py"), env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    conn, _ = await loop.sock_accept(listener)
    assert await loop.sock_recv(conn, 1) == b"!"
    elapsed = time.perf_counter() - started
    conn.close()
    listener.close()
    await proc.wait()
    return elapsed


def report(label: str, times: list[float]) -> None:
    print(f"{label:<34} median {statistics.median(times) * 1000:7.2f} ms   p99 {pct(times, 0.99) * 1000:7.2f} ms"
          f"   (n={len(times)})")


async def main(runs: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="firebox-bench-"))
    os.chmod(base, 0o755)
    (base / "s.py").write_text(SCRIPT)
    (base / "s.py").chmod(0o644)
    try:
        costs = []
        for _ in range(50):
            started = time.perf_counter()
            net = netns.create_private_loopback()
            costs.append(time.perf_counter() - started)
            net.close()
        report("netns + listening socket", costs)
        isolated, process = IsolatedBackend(), ProcessBackend()
        times: dict[str, list[float]] = {"raw": [], "isolated": [], "process": []}
        for round_ in range(runs + 2):  # interleaved, so load from elsewhere hits all three alike
            samples = {"raw": await raw_baseline(base), "isolated": await first_byte(isolated, base),
                       "process": await first_byte(process, base)}
            if round_ >= 2:  # two warm-up rounds
                for name, value in samples.items():
                    times[name].append(value)
        report("raw subprocess (baseline)", times["raw"])
        report("isolated: spawn -> first byte", times["isolated"])
        report("process: spawn -> first byte", times["process"])
        await isolated.close()
        await process.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
