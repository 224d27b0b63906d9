"""Sandbox benchmark: how fast isolated sandboxes are created, and how many idle ones fit in
1 GB, bubblewrap against zygote forks, in the same run (needs root, like the isolated backend).

    .venv/bin/python bench/sandboxes.py [--count 200] [--concurrency 16]

For each backend, `--count` sandboxes of Firebox's Python runtime (the real bootstrap command,
a hello handler, precompiled as the platform precompiles every Python package) are started
with at most `--concurrency` starts in flight, each served ONE invocation by the platform's own
Runtime API (`firebox.worker.runtimeapi.serve`, as the worker serves every sandbox), on uvloop
as the server runs, and kept idle (their runtime waits on its next `GET /invocation/next`, as a
warm sandbox does):
- creation: sandboxes per second until the last one's first invocation was answered, the latency
  of each (spawn() to its response), and the machine's CPU time per sandbox (all processes,
  /proc/stat), by part: this process (the backend's side of each spawn: cgroups, the network
  namespace, the spawn request; and the Runtime API that serves the invocation), the zygotes, the
  sandboxes themselves (alive and idle at the end, so their whole lives), and the rest (kernel
  threads, softirqs, bubblewrap's own processes);
- page faults: each idle sandbox's minor faults (for a fork, nearly all copies of pages it
  shared with its zygote) and the zygotes' per sandbox (the pages they write again after each
  fork), what most of a forked sandbox's memory and much of its CPU are;
- density: the PSS of every process of the sandboxes (and, for zygotes, of the zygote itself,
  shared among them) divided by their number, and what fits in 1 GB at that.
The bubblewrap backend is the baseline: the ratio is the figure. This measures the backends
alone; bench/invoke.py's scale-out measures the whole platform creating sandboxes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import busy_seconds, minor_faults, on_cpu_ns, out_argument, percentile, pss_kb, publish

from firebox.runtimes.api import RUNTIME_DIR, bootstrap_command
from firebox.worker.backends import IsolatedBackend, ZygoteBackend
from firebox.worker.codecache import compile_package, normalise_modes
from firebox.worker.runtimeapi import Invocation, RuntimeApiServer, RuntimeChannel, serve
from firebox.worker.sandbox_api import SandboxSpec

PYTHON = "/usr/bin/python3.11"
HANDLER = "def handler(event, context):\n    return {'hello': event.get('name')}\n"
EVENT = b'{"name": "bench"}'


async def serve_one_invocation(sandbox: Any, sandbox_id: str) -> RuntimeApiServer:
    """Serve the sandbox's Runtime API as the worker does, hand its runtime one event once it
    asks (init done), and return once the result is back: the runtime has then asked for its
    next event, which stays unanswered (it is idle, as between invocations)."""
    channel = RuntimeChannel()
    server = await serve(channel, sandbox.runtime_api, sandbox.runtime_api_connection)
    try:
        await channel.ready
        invocation = Invocation(
            request_id=sandbox_id, payload=EVENT, deadline_ms=int(time.time() * 1000) + 60_000,
            invoked_function_arn="arn:aws:lambda:us-east-1:000000000000:function:bench",
            trace_id="Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1")
        channel.deliver(invocation)
        outcome = await invocation.outcome
    except BaseException:
        server.close()
        raise
    assert outcome.error_type is None and b"bench" in outcome.payload, outcome
    return server


UIDS = range(61000, 62900)
ENVIRONMENT = {
    "_HANDLER": "hello.handler", "AWS_LAMBDA_FUNCTION_NAME": "bench", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128", "AWS_REGION": "us-east-1", "LAMBDA_TASK_ROOT": "/var/task",
    "LAMBDA_RUNTIME_DIR": "/var/runtime", "TZ": ":UTC", "LANG": "en_US.UTF-8", "PATH": "/usr/local/bin:/usr/bin/:/bin",
}


def pids_of_uids(uids: range) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid in uids:
                    found.append(int(entry))
            except OSError:
                pass
    return found


async def measure(kind: str, code: Path, count: int, concurrency: int) -> dict[str, Any]:
    backend = ZygoteBackend(uid_range=UIDS) if kind == "zygote" else IsolatedBackend(uid_range=UIDS)
    problem = backend.probe()
    if problem is not None or getattr(backend, "zygote_problem", None):
        raise SystemExit(f"{kind}: {problem or backend.zygote_problem}")  # type: ignore[attr-defined]
    sandboxes: list[Any] = []
    servers: list[RuntimeApiServer] = []
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            spec = SandboxSpec(
                sandbox_id=os.urandom(16).hex(), function_name="bench", version="1", runtime="python3.11",
                code_dir=code, runtime_dir=RUNTIME_DIR, command=tuple(bootstrap_command("python3.11", PYTHON)),
                environment=ENVIRONMENT, memory_mb=128, ephemeral_storage_mb=16,
            )
            started = time.perf_counter()
            sandbox = await backend.spawn(spec)
            sandboxes.append(sandbox)
            servers.append(await asyncio.wait_for(serve_one_invocation(sandbox, spec.sandbox_id), 30))
            latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(one() for _ in range(3)))  # warm-up: the zygote starts here
        for server in servers:
            server.close()
        for sandbox in sandboxes:
            await sandbox.cleanup()
        sandboxes.clear()
        servers.clear()
        latencies.clear()
        zygotes = [z._proc.pid for z in getattr(backend, "_zygotes", {}).values() if z._proc]
        ours, zygotes_ns = on_cpu_ns(os.getpid()), sum(on_cpu_ns(pid) for pid in zygotes)
        zygotes_faults = sum(minor_faults(pid) for pid in zygotes)
        busy, began = busy_seconds(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed, cpu = time.perf_counter() - began, busy_seconds() - busy
        # The sandboxes are all alive (idle): their whole lives are in their counters.
        parts = {"backend": on_cpu_ns(os.getpid()) - ours,
                 "zygotes": sum(on_cpu_ns(pid) for pid in zygotes) - zygotes_ns,
                 "sandboxes": sum(on_cpu_ns(pid) for pid in pids_of_uids(UIDS))}
        cpu_ms = {part: ns / 1e6 / count for part, ns in parts.items()}
        # Page faults: a forked sandbox's are mostly copies of pages it shares with its zygote,
        # and the zygote's, copies of the pages it writes again after each fork.
        faults = {"sandboxes": sum(minor_faults(pid) for pid in pids_of_uids(UIDS)) / count,
                  "zygotes": (sum(minor_faults(pid) for pid in zygotes) - zygotes_faults) / count}
        cpu_ms["rest"] = 1000 * cpu / count - sum(cpu_ms.values())
        await asyncio.sleep(0.5)  # idle
        total_kb = sum(pss_kb(pid) for pid in pids_of_uids(UIDS))
        zygotes_kb = sum(pss_kb(pid) for pid in zygotes)
        per_sandbox_mb = (total_kb + zygotes_kb) / 1024 / count
        return {
            "backend": kind, "count": count, "concurrency": concurrency,
            "created_per_s": count / elapsed, "seconds": elapsed, "cpu_ms_per_sandbox": 1000 * cpu / count,
            "cpu_ms_per_sandbox_by_part": cpu_ms, "page_faults_per_sandbox": faults,
            "latency_p50_ms": 1000 * statistics.median(latencies), "latency_p99_ms": 1000 * percentile(latencies, 99),
            "pss_per_sandbox_mb": per_sandbox_mb, "zygotes_pss_mb": zygotes_kb / 1024, "per_gb": 1024 / per_sandbox_mb,
        }
    finally:
        for server in servers:
            server.close()
        for sandbox in sandboxes:
            await sandbox.cleanup()
        await backend.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    code = Path(tempfile.mkdtemp(prefix="firebox-bench-sandboxes-", dir="/tmp"))
    try:
        (code / "hello.py").write_text(HANDLER)
        # Prepared as the platform prepares every Python package: precompiled by the sandbox's
        # interpreter (a sandbox then reads the bytecode instead of compiling), modes normalised.
        await compile_package(Path(PYTHON), code)
        normalise_modes(code)
        results = {"benchmark": "sandboxes", "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
                   "settings": vars(args), "backends": []}
        for kind in args.backends.split(","):
            results["backends"].append(await measure(kind, code, args.count, args.concurrency))
        return results
    finally:
        shutil.rmtree(code, ignore_errors=True)


def report(results: dict[str, Any]) -> None:
    rows = {row["backend"]: row for row in results["backends"]}
    base = rows.get("bubblewrap")
    print(f"sandboxes: {results['settings']['count']} Python runtimes started, one invocation each, then idle; "
          f"{results['settings']['concurrency']} starts in flight (baseline: bubblewrap)")
    print(f"{'backend':12s} {'created/s':>10s} {'CPU/sandbox':>12s} {'start p50':>10s} {'start p99':>10s} "
          f"{'PSS/sandbox':>12s} {'per GB':>7s} {'ratio created/s':>16s} {'ratio per GB':>13s}")
    for name, row in rows.items():
        ratio = (f"{row['created_per_s'] / base['created_per_s']:.1f}x", f"{row['per_gb'] / base['per_gb']:.1f}x") if base else ("", "")
        print(f"{name:12s} {row['created_per_s']:10.0f} {row['cpu_ms_per_sandbox']:10.1f}ms {row['latency_p50_ms']:8.1f}ms "
              f"{row['latency_p99_ms']:8.1f}ms {row['pss_per_sandbox_mb']:10.2f}MB {row['per_gb']:7.0f} {ratio[0]:>16s} {ratio[1]:>13s}")
    print("machine CPU per sandbox created, by part: " + "; ".join(
        f"{name} " + ", ".join(f"{part} {ms:.2f}" for part, ms in row["cpu_ms_per_sandbox_by_part"].items()) + " ms"
        for name, row in rows.items()))
    print("minor page faults per sandbox created: " + "; ".join(
        f"{name} " + ", ".join(f"{part} {n:.0f}" for part, n in row.get("page_faults_per_sandbox", {}).items())
        for name, row in rows.items()))
    zygote = rows.get("zygote")
    if zygote:
        print(f"goals: creation >= 300/s: {zygote['created_per_s']:.0f}/s; >= 500 idle per GB: {zygote['per_gb']:.0f} "
              f"(zygotes themselves: {zygote['zygotes_pss_mb']:.1f} MB, included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backends", default="bubblewrap,zygote",
                        help="which to measure, comma-separated (bubblewrap is the ratio's baseline)")
    out_argument(parser, "sandboxes")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/sandboxes.py needs root (the isolated backends do)")
    try:
        import uvloop  # as the server runs (firebox/server.py)
    except ImportError:
        results = asyncio.run(run(args))
    else:
        results = uvloop.run(run(args))
    publish(results, args.out, "sandboxes", report)


if __name__ == "__main__":
    main()
