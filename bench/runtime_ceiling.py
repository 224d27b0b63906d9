"""The sandbox side's ceiling: how many invocations per second Firebox's Python runtime takes when
the platform costs (almost) nothing, on this machine, against which the platform's own
throughput (bench/invoke.py) can be read.

    .venv/bin/python bench/runtime_ceiling.py [--runtimes 1,2,16] [--pauses-us 0,300] [--seconds 3] [--out FILE]

For each count N of `--runtimes`, it starts N copies of the real Python runtime (the platform's
bootstrap command, a hello handler, outside any sandbox) and N copies of bench/runtime_api.c,
the cheapest Runtime API there can be (compiled here with gcc: a canned event for every
`GET /next`, a 202 for every result, nothing else). It reports the invocations per second of
all N together, and each runtime's CPU per invocation (schedstat over the count). The platform
does in Python, per invocation, what runtime_api.c does in a few system calls, plus the edge,
routing, leases, logs and the client's request: the gap between this and bench/invoke.py's
throughput is the platform's data plane.

As root it does the same again with each runtime in a sandbox of the zygote backend (namespaces,
its own uid, seccomp, memory cgroup), its Runtime API socket handed to its runtime_api.c
(`fd:N`): what isolation itself adds to the runtime's CPU per invocation, with no platform
around it. (On the 2-core development VM, two runs of 1, 2 and 16 runtimes: 98-124 us per
invocation in sandboxes against 78-135 us outside: isolation adds little to the hot path.)

With a pause (`--pauses-us`, each but 0 another set of rows), each API answers every
`GET /next` that many microseconds late, so the runtime falls asleep before each event and is
woken by it, as between a platform's invocations (at 16 clients a warm sandbox waits some
0.3-3 ms for its next event): the difference to the rows without a pause is what being woken
costs a runtime per invocation (the switch, and caches and TLB refilled after the others ran),
which the platform's sandboxes pay on every invocation (bench/cpu.py's "sandboxes" row). First
reading, one run on the 2-core VM (runtime CPU per invocation, 1 and 16 runtimes): no pause
34-43 and 25-36 us; 300 us 79-95 and 62-78 us; 1 ms 142-143 and 93-100 us.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import out_argument, publish
from sandboxes import ENVIRONMENT, UIDS, pids_of_uids

from firebox.runtimes.api import RUNTIME_DIR, bootstrap_command
from firebox.worker.backends import ZygoteBackend
from firebox.worker.sandbox_api import SandboxSpec

BENCH = Path(__file__).resolve().parent
PYTHON = "/usr/bin/python3.11"
HANDLER = "def handler(event, context):\n    return {'hello': 'world'}\n"


def compile_api(work: Path) -> Path:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise SystemExit("bench/runtime_ceiling.py needs a C compiler (Debian: apt-get install gcc)")
    binary = work / "runtime_api"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(BENCH / "runtime_api.c")], check=True)
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_ns(pid: int) -> int | None:
    """Nanoseconds `pid` has been on a CPU; None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def count(apis: list[subprocess.Popen[str]], runtime_pids: Callable[[], list[int]], seconds: float) -> dict[str, Any]:
    """Each API's results/s, and the runtimes' CPU per invocation (schedstat) over the counted half."""
    time.sleep(min(1.0, seconds / 2))  # past each API's 1000 warm-up results
    before = {pid: cpu_ns(pid) for pid in runtime_pids()}
    began = time.perf_counter()
    time.sleep(seconds / 2)
    after = {pid: cpu_ns(pid) for pid in before}
    used = sum(a - b for pid, b in before.items() if b is not None and (a := after[pid]) is not None)
    window = time.perf_counter() - began
    rates = []
    for api_proc in apis:
        out, _ = api_proc.communicate(timeout=60)
        if api_proc.returncode != 0 or not out.strip():
            raise SystemExit(f"runtime_api exited with status {api_proc.returncode}")
        rates.append(float(out))
    total = sum(rates)
    return {"runtimes": len(apis), "per_s": total, "per_runtime_per_s": rates,
            "runtime_cpu_us_per_invocation": used / 1000 / (total * window) if total else None}


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def measure(api: Path, task: Path, runtimes: int, seconds: float, pause_us: int) -> dict[str, Any]:
    apis: list[subprocess.Popen[str]] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(runtimes):
            port = free_port()
            apis.append(subprocess.Popen([str(api), str(port), str(seconds), str(pause_us)], stdout=subprocess.PIPE,
                                         text=True))
            time.sleep(0.05)  # listening
            env = {"AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}", "_HANDLER": "app.handler",
                   "LAMBDA_TASK_ROOT": str(task), "AWS_LAMBDA_FUNCTION_NAME": "ceiling",
                   "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
                   "PATH": "/usr/bin:/bin"}
            command = bootstrap_command("python3.11", PYTHON, runtime_dir=RUNTIME_DIR, task_root=task)
            procs.append(subprocess.Popen(command, cwd=task, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, text=True))
        return {"where": "outside", "pause_us": pause_us, **count(apis, lambda: [p.pid for p in procs], seconds)}
    finally:
        stop_all(procs + apis)


async def measure_sandboxed(api: Path, task: Path, runtimes: int, seconds: float, pause_us: int) -> dict[str, Any]:
    """The same, each runtime in a sandbox of the zygote backend (its namespaces, uid, seccomp
    filter and memory cgroup), its Runtime API socket (its socketpair's other end, or its
    listener) handed to its own runtime_api.c: what isolation adds to the runtime's CPU per
    invocation, without the platform around it."""
    backend = ZygoteBackend(uid_range=UIDS)
    if (problem := backend.probe() or getattr(backend, "zygote_problem", None)) is not None:
        raise SystemExit(f"zygote backend: {problem}")
    sandboxes: list[Any] = []
    apis: list[subprocess.Popen[str]] = []
    try:
        for _ in range(runtimes):
            spec = SandboxSpec(
                sandbox_id=os.urandom(16).hex(), function_name="ceiling", version="1", runtime="python3.11",
                code_dir=task, runtime_dir=RUNTIME_DIR, command=tuple(bootstrap_command("python3.11", PYTHON)),
                environment={**ENVIRONMENT, "_HANDLER": "app.handler"}, memory_mb=128, ephemeral_storage_mb=16,
            )
            sandbox = await backend.spawn(spec)
            sandboxes.append(sandbox)
            # The runtime's own socketpair when the backend made one (it then never connects
            # to the listener), else the listener.
            if sandbox.runtime_api_connection is not None:
                fd, where = sandbox.runtime_api_connection.fileno(), "conn"
            else:
                fd, where = sandbox.runtime_api.fileno(), "fd"
            apis.append(subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; `count` waits, on a thread
                [str(api), f"{where}:{fd}", str(seconds), str(pause_us)], stdout=subprocess.PIPE, text=True,
                pass_fds=(fd,)))
        return {"where": "zygote sandbox", "pause_us": pause_us,
                **await asyncio.to_thread(count, apis, lambda: pids_of_uids(UIDS), seconds)}
    finally:
        stop_all(apis)
        for sandbox in sandboxes:
            await sandbox.cleanup()
        await backend.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="firebox-bench-ceiling-", dir="/tmp"))
    try:
        api = compile_api(work)
        task = work / "task"
        task.mkdir()
        (task / "app.py").write_text(HANDLER)
        for path, mode in ((work, 0o755), (task, 0o755), (task / "app.py", 0o644)):  # a sandbox's uid reads them
            path.chmod(mode)
        rows = [measure(api, task, n, args.seconds, pause) for pause in args.pauses_us for n in args.runtimes]
        if os.geteuid() == 0:
            rows += [asyncio.run(measure_sandboxed(api, task, n, args.seconds, pause))
                     for pause in args.pauses_us for n in args.runtimes]
        else:
            print("runtime_ceiling: the sandboxed rows need root; skipped")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"benchmark": "runtime_ceiling",
            "machine": {"cpus": os.cpu_count(), "python": PYTHON, "load_average": os.getloadavg()},
            "settings": {"runtimes": args.runtimes, "pauses_us": args.pauses_us, "seconds": args.seconds},
            "rows": rows}


def report(results: dict[str, Any]) -> None:
    print("the runtime alone: Python hello runtimes, each against a minimal Runtime API in C (bench/runtime_api.c)")
    print(f"{'where':16s} {'runtimes':>8s} {'pause':>8s} {'invocations/s':>14s} {'runtime CPU per invocation':>28s}")
    for row in results["rows"]:
        cpu = row["runtime_cpu_us_per_invocation"]
        pause = f"{row.get('pause_us', 0)} us"
        print(f"{row.get('where', 'outside'):16s} {row['runtimes']:8d} {pause:>8s} {row['per_s']:14.0f} "
              f"{'' if cpu is None else f'{cpu:.0f} us':>28s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtimes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 16])
    parser.add_argument("--pauses-us", type=lambda s: [int(x) for x in s.split(",")], default=[0, 300],
                        help="how late each API answers GET /next; 0: at once")
    parser.add_argument("--seconds", type=float, default=3.0)
    out_argument(parser, "runtime-ceiling")
    args = parser.parse_args()
    if not Path(PYTHON).exists():
        raise SystemExit(f"{PYTHON} is missing (the Python runtime's interpreter)")
    results = run(args)
    publish(results, args.out, "runtime-ceiling", report)


if __name__ == "__main__":
    main()
