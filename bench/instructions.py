"""Instructions the server executes per warm invocation, counted by valgrind: a measure of the
data plane's CPU cost that the host's speed hardly moves.

    .venv/bin/python bench/instructions.py [--invokes 400] [--clients 1,16] [--against REV] [--out FILE]

Why: on this VM the same pure-Python work takes 17 to 29 ms of CPU from one second to the next
(`common.host_probe_ms`), and two identical servers measured in alternation differed by 10-18% in
CPU per invocation over 4 rounds. A change worth 3% cannot be seen that way. Valgrind's
callgrind counts the instructions a process executes, not the time they take: the same server
serving the same requests on an idle machine gave 756,260 and 756,724 per invocation.

Not quite independent of the machine, though: some of the server's work is paced by time, not
by requests (the log store's linger before a batch, the timers of the edge and the pools), and
under valgrind the server runs some 50 times slower, so that work weighs more per invocation
than it does at full speed, and more still when the machine is busy: the same tree gave 759,000
on an idle machine and 847,000 beside three other valgrind runs. So compare trees in one run
(`--against`, alternated with `--rounds`), on an otherwise idle machine.

What it does, for the working tree's `src/` and, with `--against REV`, for that git revision's
(exported to a temporary folder): start `firebox serve` from that tree under callgrind (its
sandboxes, zygotes and stem cells are other processes, not counted), create the Python hello of
bench/invoke.py, warm it (sequential invocations, then 16 clients, so the pool holds warm
sandboxes), wait 3 s for the stem cells' refill, zero the counters (`callgrind_control -z`),
send `--invokes` invocations, one at a time on one keep-alive connection (1) or from that many
connections at once (more than 1), and dump the counters (`callgrind_control -d`): every thread
of the server, its event loop and its log writer among them. Prints instructions per invocation
for each tree and count of clients, and the ratio to `--against`.

It is a count of instructions, not of time: a system call counts as the few instructions that
enter the kernel, a cache miss as one. So it ranks changes to the Python path (the interpreter
is most of the event loop's time: perf puts 74% of its samples in libpython at 16 clients), not
changes of system calls or of memory layout; bench/cpu.py measures time.

Needs valgrind (`apt-get install valgrind`). Valgrind lets a program set its open-files hard
limit only to the one it started with, and the server lowers it for every sandbox (and its
probes) in the child, before exec, where valgrind still runs: so the server measured here gets a
`sitecustomize` (written by this script, on its PYTHONPATH) that, when valgrind refuses, sets
only the soft limit. Under this benchmark alone, a sandbox may then raise its own open-files
limit up to the server's; nothing else changes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import out_argument, publish, run_loop, start_firebox, stop_firebox
from invoke import create_functions, sequential, throughput

ROOT = Path(__file__).resolve().parent.parent
PATH = "/2015-03-31/functions/hello/invocations"
# See the module doc: imported by the server measured (and whatever Python it starts).
SITECUSTOMIZE = """\
import resource

_setrlimit = resource.setrlimit


def setrlimit(which, limits):
    try:
        _setrlimit(which, limits)
    except ValueError:  # valgrind: 'not allowed to raise maximum limit'
        if which != resource.RLIMIT_NOFILE:
            raise
        _setrlimit(which, (limits[0], resource.getrlimit(which)[1]))


resource.setrlimit = setrlimit
"""


def exported(rev: str, into: Path) -> Path:
    """`src/` of git revision `rev`, written under `into`; returns that `src` folder."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def start_under_callgrind(src: Path, scratch: str, log: Any) -> tuple[subprocess.Popen[str], int]:
    """`firebox serve` from `src` under callgrind, its data and counts in `scratch`."""
    shim = Path(scratch) / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    env["PYTHONPATH"] = f"{shim}:{src}"
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={scratch}/callgrind.%p"]
    # Start-up is some 50 times slower under valgrind.
    return start_firebox(f"{scratch}/data", env, wrapper=valgrind, stderr=log, ready_s=300)


def dumped_instructions(scratch: str, pid: int) -> int:
    """The instruction count of the dump `callgrind_control -d` asked for (callgrind writes it
    as <file>.1; the file without a suffix is written at exit)."""
    for line in Path(f"{scratch}/callgrind.{pid}.1").read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit(f"no summary in callgrind's dump of {pid}")


async def measure(src: Path, invokes: int, clients: int) -> float:
    """Instructions per warm invocation of the server built from `src`."""
    with tempfile.TemporaryDirectory(prefix="firebox-bench-instr-") as scratch:
        log_path = Path(scratch) / "server.log"
        with log_path.open("w") as log:
            proc, port = start_under_callgrind(src, scratch, log)
        try:
            create_functions(f"http://127.0.0.1:{port}", ["hello"])
            await sequential(port, PATH, 100)
            await throughput(port, PATH, 64, 16)
            await asyncio.sleep(3)  # the stem cells taken by the warm-up are replaced meanwhile
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
            if clients == 1:
                await sequential(port, PATH, invokes)
            else:
                await throughput(port, PATH, invokes, clients)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
            return dumped_instructions(scratch, proc.pid) / invokes
        except BaseException:
            print("the server's log (valgrind's lines left out), last lines:", file=sys.stderr)
            lines = [line for line in log_path.read_text().splitlines() if not line.startswith(("==", "--"))]
            print("\n".join(lines[-80:]), file=sys.stderr)
            raise
        finally:
            stop_firebox(proc, grace_s=120)  # callgrind writes its last counts as the server exits


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench/instructions.py needs valgrind: apt-get install valgrind")
    clients = [int(c) for c in args.clients.split(",")]
    trees: dict[str, Path] = {"working tree": ROOT / "src"}
    samples: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="firebox-bench-rev-") as scratch:
        if args.against:
            trees[args.against] = exported(args.against, Path(scratch))
        # Alternated, round by round: see the module doc (the machine's load moves the counts).
        for _ in range(args.rounds):
            for count in clients:
                for label, src in trees.items():
                    per_invocation = await measure(src, args.invokes, count)
                    samples.setdefault((label, count), []).append(per_invocation)
                    print(f"  {label}, {count} client(s): {per_invocation:,.0f} instructions per invocation",
                          flush=True)
    rows = [{"tree": label, "clients": count, "instructions": statistics.median(values), "rounds": values}
            for (label, count), values in samples.items()]
    return {"benchmark": "instructions", "machine": {"load_average": os.getloadavg()},
            "settings": {"invokes": args.invokes, "clients": clients, "against": args.against,
                         "rounds": args.rounds}, "rows": rows}


def report(results: dict[str, Any]) -> None:
    rows, against = results["rows"], results["settings"]["against"]
    print("instructions the server executes per warm invocation of a Python hello (callgrind; median of "
          f"{results['settings']['rounds']} rounds)")
    print(f"{'tree':24s}{'clients':>8s}{'instructions':>16s}{'ratio':>8s}   rounds")
    for row in rows:
        base = next((r["instructions"] for r in rows if r["tree"] == against and r["clients"] == row["clients"]), None)
        ratio = f"{row['instructions'] / base:8.3f}" if base and row["tree"] != against else " " * 8
        spread = ", ".join(f"{value:,.0f}" for value in row["rounds"])
        print(f"{row['tree']:24s}{row['clients']:8d}{row['instructions']:16,.0f}{ratio}   {spread}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invokes", type=int, default=400)
    parser.add_argument("--clients", default="1,16", help="comma-separated counts of concurrent clients")
    parser.add_argument("--against", help="a git revision to measure too, as the baseline of the ratio")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each tree, alternated")
    out_argument(parser, "instructions")
    args = parser.parse_args()
    results = run_loop(run(args))
    publish(results, args.out, "instructions", report)


if __name__ == "__main__":
    main()
