"""Where the machine's CPU goes per warm invocation, and what that allows: the data plane's budget.

    .venv/bin/python bench/cpu.py [--invokes 3000] [--clients 16] [--out FILE]

It starts a real Firebox server, creates the Python hello of bench/invoke.py, warms it up, waits
for the stem cells taken meanwhile to be replaced (`settle`), then sends `--invokes` invocations
twice: one at a time on one keep-alive connection, and from
`--clients` connections at once. Around each run it reads the CPU time actually spent (the first
field of /proc/<pid>/task/<tid>/schedstat: nanoseconds on a CPU) by:
- the server's event-loop thread (its main thread) and its other threads (log writer, store
  readers, the network-namespace maker...);
- everything the server started: the sandboxes' runtimes, stem cells and zygotes;
- this process, the client (the same minimal HTTP client as bench/invoke.py);
and the whole machine's busy time (/proc/stat), which also holds the kernel's work in interrupt
and softirq context. Per invocation, in microseconds, with the invocations per second the
machine could sustain at that cost (cores / machine CPU per invocation) next to the rate seen.
Also, from the server's own count (GET /_firebox/stats, `gc`): the garbage collections during
each run, the event loop's pauses they caused, and how long a full one took.

Why this benchmark: a throughput goal is a CPU budget. 8,000 invocations/s on 2 cores is 250
microseconds of machine CPU per invocation, client included; this table says how far each part
is from it, measured, not inferred from a profile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from typing import Any

from common import (
    busy_seconds,
    on_cpu_ns,
    out_argument,
    publish,
    run_loop,
    start_firebox,
    stop_firebox,
)
from invoke import create_functions, descendants, platform_stats, sequential, throughput

GOAL_PER_S = 8000  # the goal for synchronous invocations on 2 cores
PATH = "/2015-03-31/functions/hello/invocations"
PARTS = (("server_loop", "server, event-loop thread"), ("server_threads", "server, other threads"),
         ("sandboxes", "sandboxes (runtimes, stem cells, zygotes)"), ("client", "client (this benchmark)"))


def snapshot(server: int) -> dict[str, float]:
    """Cumulative CPU seconds of each part, and the machine's busy seconds."""
    return {
        "server_loop": on_cpu_ns(server, only_thread=server) / 1e9,
        "server_threads": on_cpu_ns(server, skip_thread=server) / 1e9,
        "sandboxes": sum(on_cpu_ns(pid) for pid in descendants(server)) / 1e9,
        "client": on_cpu_ns(os.getpid()) / 1e9,
        "machine": busy_seconds(),
    }


def per_invocation(before: dict[str, float], after: dict[str, float], invokes: int, seconds: float,
                   cpus: int) -> dict[str, float]:
    row = {name: (after[name] - before[name]) / invokes * 1e6 for name in (*dict(PARTS), "machine")}
    row["per_s"] = invokes / seconds
    row["ceiling_per_s"] = cpus * 1e6 / row["machine"] if row["machine"] > 0 else 0.0
    return row


def collections(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """The server's garbage collections between two /_firebox/stats: count per generation, all
    their pauses together, and the mean pause of the full ones (generation 2), if any."""
    try:
        old, new = before["gc"]["generations"], after["gc"]["generations"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None  # a server without the count
    counts = {g: new[g]["collections"] - old[g]["collections"] for g in new}
    full = (new["2"]["total_ms"] - old["2"]["total_ms"]) / counts["2"] if counts["2"] else None
    return {"collections": counts, "full_mean_ms": full,
            "total_ms": sum(new[g]["total_ms"] - old[g]["total_ms"] for g in new)}


async def settle(server: int, deadline_s: float = 20.0) -> None:
    """Wait until everything the server started is quiet (under 2% of a CPU over a quarter of a
    second): the warm-up's cold starts take stem cells, and their background refills would
    otherwise be counted as the runs' sandbox CPU (about 40 us per invocation, measured)."""
    window = 0.25
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        before = sum(on_cpu_ns(pid) for pid in descendants(server))
        await asyncio.sleep(window)
        if sum(on_cpu_ns(pid) for pid in descendants(server)) - before < 0.02 * window * 1e9:
            return


async def measured(server: int, port: int, invokes: int, clients: int, cpus: int) -> dict[str, Any]:
    """One run: `invokes` invocations, sequential (`clients` = 1) or from `clients` connections."""
    stats = await platform_stats(port)
    before, started = snapshot(server), time.perf_counter()
    if clients == 1:
        await sequential(port, PATH, invokes)
    else:
        await throughput(port, PATH, invokes, clients)
    seconds = time.perf_counter() - started
    row = per_invocation(before, snapshot(server), invokes, seconds, cpus)
    return {"clients": clients, "invokes": invokes, **row, "gc": collections(stats, await platform_stats(port))}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="firebox-bench-cpu-") as data_dir:
        firebox, port = start_firebox(data_dir, env)
        try:
            create_functions(f"http://127.0.0.1:{port}", ["hello"])
            await sequential(port, PATH, 200)  # the cold start and a warm-up, left out below
            await throughput(port, PATH, 4 * args.clients, args.clients)  # every sandbox warm
            await settle(firebox.pid)
            rows = [await measured(firebox.pid, port, args.invokes, 1, cpus),
                    await measured(firebox.pid, port, args.invokes, args.clients, cpus)]
        finally:
            stop_firebox(firebox)
    return {"benchmark": "cpu",
            "machine": {"cpus": cpus, "python": sys.version.split()[0], "load_average": os.getloadavg()},
            "settings": {"invokes": args.invokes, "clients": args.clients},
            "goal": {"per_s": GOAL_PER_S, "machine_us_budget": cpus * 1e6 / GOAL_PER_S},
            "rows": rows}


def report(results: dict[str, Any]) -> None:
    cpus, budget = results["machine"]["cpus"], results["goal"]["machine_us_budget"]
    print(f"CPU per warm invocation of a Python hello, microseconds ({cpus} cpus; schedstat and /proc/stat)")
    header = "".join(f"{'1 client' if row['clients'] == 1 else str(row['clients']) + ' clients':>12s}"
                     for row in results["rows"])
    print(f"{'part':44s}{header}")
    for name, label in (*PARTS, ("machine", "the whole machine (busy time, kernel included)")):
        print(f"{label:44s}" + "".join(f"{row[name]:12.0f}" for row in results["rows"]))
    print(f"{'invocations/s seen':44s}" + "".join(f"{row['per_s']:12.0f}" for row in results["rows"]))
    print(f"{'invocations/s the machine allows at that cost':44s}"
          + "".join(f"{row['ceiling_per_s']:12.0f}" for row in results["rows"]))
    for row in results["rows"]:
        gc = row.get("gc")
        if gc is not None:
            counts = ", ".join(f"{gc['collections'][g]} of generation {g}" for g in sorted(gc["collections"]))
            full = "" if gc["full_mean_ms"] is None else f", full ones {gc['full_mean_ms']:.1f} ms each on average"
            print(f"server garbage collections, {row['clients']} client(s): {counts} "
                  f"({gc['total_ms']:.0f} ms in all{full})")
    print(f"goal {results['goal']['per_s']}/s on {cpus} cores = {budget:.0f} us of machine CPU per invocation, "
          "client included")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invokes", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    out_argument(parser, "cpu")
    args = parser.parse_args()
    results = run_loop(run(args))
    publish(results, args.out, "cpu", report)


if __name__ == "__main__":
    main()
