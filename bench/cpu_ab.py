"""Two trees' CPU per warm invocation, compared in short alternated bursts: a change's effect on
the data plane's CPU, seen through the host's drift.

    .venv/bin/python bench/cpu_ab.py --against REV [--rounds 20] [--burst 1500] [--clients 16] [--out FILE]

Why: on this VM the same server's CPU per invocation moves by a quarter from one minute to the
next (bench/cpu.py's rows, three runs of the same tree: event loop 165-184 us at one time, 127 at
another), and rounds of whole runs alternated minutes apart (as bench/cpu.py's A/B used to be
done) could not tell a 4% change from none. bench/instructions.py counts the server's
instructions, which the host does not move, but not the kernel's work (a system call is a few
instructions), nor other processes' (the sandboxes, a helper process).

What it does: starts two Firebox servers at once, `--against REV`'s `src/` (exported from git)
and the working tree's, creates the Python hello of bench/invoke.py on each and warms both, then
for `--rounds` rounds sends `--burst` invocations from `--clients` connections (1: one at a time on
one keep-alive connection) to each in turn, the order swapped every round. Around each burst it
reads what bench/cpu.py reads (schedstat of the server's event-loop thread and other threads,
everything it started, this client, /proc/stat). A burst takes about a third of a second: the
host's speed changes little between the two of a round, so each round's ratio (working tree
over REV) cancels it. Prints, per part, the median per invocation of each tree and the median
of the rounds' ratios, with the ratios' spread (p10-p90); writes JSON with every burst.

The other server idles while a burst runs (its timers: a few microseconds a second). The same
tree against itself (12 rounds at 16 clients): ratios 0.977 for the event loop, 0.996 for the
sandboxes, 1.002 for the machine, each round's within 0.83-1.30 (p10-p90): a median of 20 rounds
tells a change of about 4%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import out_argument, percentile, publish, run_loop, start_firebox, stop_firebox
from cpu import PARTS, PATH, measured, settle
from instructions import exported
from invoke import create_functions, sequential, throughput

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = (*PARTS, ("machine", "the whole machine (busy time, kernel included)"), ("per_s", "invocations/s"))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="firebox-bench-cpu-ab-") as scratch:
        trees = {"against": exported(args.against, Path(scratch)), "working tree": ROOT / "src"}
        servers: dict[str, tuple[Any, int]] = {}
        try:
            for name, src in trees.items():
                data_dir = Path(scratch) / name.replace(" ", "-")
                server, port = start_firebox(str(data_dir), {**env, "PYTHONPATH": str(src)})
                servers[name] = (server, port)
                create_functions(f"http://127.0.0.1:{port}", ["hello"])
                await sequential(port, PATH, 200)  # the cold start and a warm-up
                await throughput(port, PATH, 4 * args.clients, args.clients)  # every sandbox warm
            for server, _ in servers.values():
                await settle(server.pid)
            bursts: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for round_ in range(args.rounds):
                for name in (list(trees) if round_ % 2 == 0 else list(reversed(trees))):
                    server, port = servers[name]
                    bursts[name].append(await measured(server.pid, port, args.burst, args.clients, cpus))
        finally:
            for server, _ in servers.values():
                stop_firebox(server)
    return {"benchmark": "cpu_ab",
            "machine": {"cpus": cpus, "python": sys.version.split()[0], "load_average": os.getloadavg()},
            "settings": {"against": args.against, "rounds": args.rounds, "burst": args.burst, "clients": args.clients},
            "bursts": bursts, "summary": summary(bursts)}


def summary(bursts: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    base, new = bursts["against"], bursts["working tree"]
    rows = {}
    for name, _ in COLUMNS:
        ratios = [b[name] / a[name] for a, b in zip(base, new) if a[name] > 0]
        rows[name] = {"against": statistics.median(a[name] for a in base),
                      "working_tree": statistics.median(b[name] for b in new),
                      "ratio": statistics.median(ratios) if ratios else float("nan"),
                      "ratio_p10": percentile(ratios, 10) if ratios else float("nan"),
                      "ratio_p90": percentile(ratios, 90) if ratios else float("nan")}
    return rows


def report(results: dict[str, Any]) -> None:
    settings = results["settings"]
    who = "1 client" if settings["clients"] == 1 else f"{settings['clients']} clients"
    print(f"CPU per warm invocation of a Python hello, microseconds: {settings['rounds']} rounds of "
          f"{settings['burst']} invocations from {who}, alternated between {settings['against']} and the working tree")
    print(f"{'part':48s}{settings['against'][:12]:>12s}{'working tree':>14s}{'ratio':>8s}{'p10-p90':>14s}")
    for name, label in COLUMNS:
        row = results["summary"][name]
        print(f"{label:48s}{row['against']:12.1f}{row['working_tree']:14.1f}{row['ratio']:8.3f}"
              f"{row['ratio_p10']:8.3f}-{row['ratio_p90']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=1500, help="invocations per burst")
    parser.add_argument("--clients", type=int, default=16)
    out_argument(parser, "cpu_ab")
    args = parser.parse_args()
    publish(run_loop(run(args)), args.out, "cpu_ab", report)


if __name__ == "__main__":
    main()
