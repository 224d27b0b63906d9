"""Does a warm sandbox's memory grow with the invocations it serves? A leak benchmark.

    .venv/bin/python bench/warm_memory.py [--invokes 40000] [--every 10000] [--kinds python,node] [--out FILE]

For each kind (bench/invoke.py's Python and Node.js hellos), it starts a real Firebox server,
creates the function, finds the sandbox process that serves it (the server's descendant whose
CPU time grows during a burst of invocations: the runtime's process), then sends
`--invokes` sequential invocations and reads that process's resident memory (VmRSS) before and
after every `--every` of them. Reports the growth per 1,000 invocations, over the whole run
and over its second half: what counts, as a runtime first grows to its working size (Node.js's
V8 lets its heap grow by tens of MB over the first ~20,000 invocations before it collects in
earnest; Python's runtime stays flat).

Why: a warm sandbox lives for hours (up to FIREBOX_MAX_SANDBOX_LIFETIME_S) and serves up to
millions of invocations, and anything it keeps per invocation ends at its memory limit, as an
invocation failing with `Runtime.OutOfMemory`. Nothing else measures that: the other benchmarks
and the tests run a sandbox for seconds. The first leak it found was the Python runtime's
`os.environ["_X_AMZN_TRACE_ID"] = ...`: glibc's setenv keeps every distinct value it is given
(~140 bytes per invocation, 1.4 MB per 10,000; now set through putenv on a buffer of the
runtime's own). Node.js's runtime had the same leak, through process.env (~112 KB per 1,000 in
the second half); it now sets the variable with runtimes/nodejs/trace_env.node's putenv (-87 KB
per 1,000: flat once V8's heap has grown), and with process.env, leak included, only where
bin/setup could not build that addon.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import on_cpu_ns, out_argument, publish, run_loop, start_firebox, stop_firebox
from cpu import settle
from invoke import create_functions, descendants, sequential


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for {pid}")


async def serving_sandbox(server: int, port: int, path: str) -> int:
    """The pid of the process that runs the function's invocations: the descendant whose CPU
    time grew most during a burst of them, confirmed by a second burst (a stem cell starting
    meanwhile, to replace the one the cold start took, can outspend it and looks the same)."""
    await sequential(port, path, 200)
    for _ in range(5):
        await settle(server)
        before = {pid: on_cpu_ns(pid) for pid in descendants(server)}
        await sequential(port, path, 500)
        found = max(before, key=lambda pid: on_cpu_ns(pid) - before[pid])
        spent = on_cpu_ns(found)
        await sequential(port, path, 200)
        if (on_cpu_ns(found) - spent) / 1000 / 200 >= 5:  # a runtime spends tens of us on each
            return found
    raise SystemExit("could not tell which process serves the function")


async def measure(kind: str, invokes: int, every: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    name = f"memory-{kind}"
    path = f"/2015-03-31/functions/{name}/invocations"
    with tempfile.TemporaryDirectory(prefix="firebox-bench-memory-") as data_dir:
        server, port = start_firebox(data_dir, env)
        try:
            create_functions(f"http://127.0.0.1:{port}", [name], kind)
            sandbox = await serving_sandbox(server.pid, port, path)
            points, cpu_before = [(0, rss_kb(sandbox))], on_cpu_ns(sandbox)
            while points[-1][0] < invokes:
                await sequential(port, path, every)
                points.append((points[-1][0] + every, rss_kb(sandbox)))
            cpu_us = (on_cpu_ns(sandbox) - cpu_before) / 1000 / invokes
        finally:
            stop_firebox(server)
    if cpu_us < 5:  # a runtime spends tens of microseconds on each: this one served none
        raise SystemExit(f"{kind}: process {sandbox} was not the one serving ({cpu_us:.1f} us per invocation)")
    half = points[len(points) // 2]
    last = points[-1]
    return {
        "kind": kind,
        "runtime_cpu_us_per_invocation": cpu_us,
        "points": [{"invocations": n, "rss_kb": kb} for n, kb in points],
        "kb_per_1000": (last[1] - points[0][1]) / last[0] * 1000,
        "second_half_kb_per_1000": (last[1] - half[1]) / (last[0] - half[0]) * 1000 if last[0] > half[0] else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = args.kinds.split(",")
    rows = [run_loop(measure(kind, args.invokes, args.every)) for kind in kinds]
    return {"benchmark": "warm_memory",
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_average": os.getloadavg()},
            "settings": {"invokes": args.invokes, "every": args.every, "kinds": kinds}, "rows": rows}


def report(results: dict[str, Any]) -> None:
    print(f"a warm sandbox's resident memory (VmRSS of its runtime) over {results['settings']['invokes']} "
          "sequential invocations of a hello")
    print(f"{'kind':8s} {'start':>9s} {'end':>9s} {'KB per 1,000':>13s} {'second half':>12s}")
    for row in results["rows"]:
        points, half = row["points"], row["second_half_kb_per_1000"]
        print(f"{row['kind']:8s} {points[0]['rss_kb']:6d} KB {points[-1]['rss_kb']:6d} KB "
              f"{row['kb_per_1000']:13.1f} {'' if half is None else f'{half:.1f}':>12s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invokes", type=int, default=40000)
    parser.add_argument("--every", type=int, default=10000)
    parser.add_argument("--kinds", default="python,node")
    out_argument(parser, "warm-memory")
    args = parser.parse_args()
    if args.invokes < 1 or not 0 < args.every <= args.invokes:
        parser.error("--invokes must be at least 1, and --every between 1 and --invokes")
    publish(run(args), args.out, "warm-memory", report)


if __name__ == "__main__":
    main()
