"""The sandbox side's ceiling: how many invocations per second Firebox's Python runtime takes when
the platform costs (almost) nothing, on this machine, against which the platform's own
throughput (bench/invoke.py) can be read.

    .venv/bin/python bench/runtime_ceiling.py [--runtimes 1,2,16] [--seconds 3] [--out FILE]

For each count N of `--runtimes`, it starts N copies of the real Python runtime (the platform's
bootstrap command, a hello handler, outside any sandbox) and N copies of bench/runtime_api.c,
the cheapest Runtime API there can be (compiled here with gcc: a canned event for every
`GET /next`, a 202 for every result, nothing else). It reports the invocations per second of
all N together, and each runtime's CPU per invocation (schedstat over the count). The platform
does in Python, per invocation, what runtime_api.c does in a few system calls, plus the edge,
routing, leases, logs and the client's request: the gap between this and bench/invoke.py's
throughput is the platform's data plane.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import out_argument, publish

from firebox.runtimes.api import RUNTIME_DIR, bootstrap_command

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


def cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def measure(api: Path, task: Path, runtimes: int, seconds: float) -> dict[str, Any]:
    apis, procs = [], []
    try:
        for _ in range(runtimes):
            port = free_port()
            apis.append(subprocess.Popen([str(api), str(port), str(seconds)], stdout=subprocess.PIPE, text=True))
            time.sleep(0.05)  # listening
            env = {"AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}", "_HANDLER": "app.handler",
                   "LAMBDA_TASK_ROOT": str(task), "AWS_LAMBDA_FUNCTION_NAME": "ceiling",
                   "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
                   "PATH": "/usr/bin:/bin"}
            command = bootstrap_command("python3.11", PYTHON, runtime_dir=RUNTIME_DIR, task_root=task)
            procs.append(subprocess.Popen(command, cwd=task, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        time.sleep(min(1.0, seconds / 2))  # past each API's 1000 warm-up results
        before = [cpu_ns(p.pid) for p in procs]
        began = time.perf_counter()
        time.sleep(seconds / 2)
        used = sum(cpu_ns(p.pid) - b for p, b in zip(procs, before, strict=True))
        window = time.perf_counter() - began
        rates = []
        for api_proc in apis:
            out, _ = api_proc.communicate(timeout=60)
            if api_proc.returncode != 0 or not out.strip():
                raise SystemExit(f"runtime_api exited with status {api_proc.returncode}")
            rates.append(float(out))
    finally:
        for proc in procs + apis:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    total = sum(rates)
    return {"runtimes": runtimes, "per_s": total, "per_runtime_per_s": rates,
            "runtime_cpu_us_per_invocation": used / 1000 / (total * window) if total else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="firebox-bench-ceiling-"))
    try:
        api = compile_api(work)
        task = work / "task"
        task.mkdir()
        (task / "app.py").write_text(HANDLER)
        rows = [measure(api, task, n, args.seconds) for n in args.runtimes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"benchmark": "runtime_ceiling",
            "machine": {"cpus": os.cpu_count(), "python": PYTHON, "load_average": os.getloadavg()},
            "settings": {"runtimes": args.runtimes, "seconds": args.seconds}, "rows": rows}


def report(results: dict[str, Any]) -> None:
    print("the runtime alone: Python hello runtimes, each against a minimal Runtime API in C (bench/runtime_api.c)")
    print(f"{'runtimes':>8s} {'invocations/s':>14s} {'runtime CPU per invocation':>28s}")
    for row in results["rows"]:
        cpu = row["runtime_cpu_us_per_invocation"]
        print(f"{row['runtimes']:8d} {row['per_s']:14.0f} {'' if cpu is None else f'{cpu:.0f} us':>28s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtimes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 16])
    parser.add_argument("--seconds", type=float, default=3.0)
    out_argument(parser, "runtime-ceiling")
    args = parser.parse_args()
    if not Path(PYTHON).exists():
        raise SystemExit(f"{PYTHON} is missing (the Python runtime's interpreter)")
    results = run(args)
    publish(results, args.out, "runtime-ceiling", report)


if __name__ == "__main__":
    main()
