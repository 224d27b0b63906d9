"""Every benchmark in one run, with modest sizes: a few minutes on 2 cores. What `make bench` runs.

    .venv/bin/python bench/run_all.py [--quick]
        [--only invoke,hops,cpu,runtime_ceiling,async_invoke,logs,keepalive,sandboxes,warm_memory] [--out-dir DIR]

Runs bench/invoke.py, hops.py, cpu.py, runtime_ceiling.py, async_invoke.py, logs.py, keepalive.py,
sandboxes.py (root only: it is skipped otherwise) and warm_memory.py one after the other, each in
its own process with its output in <dir>/<name>.log, then prints their tables as one, and writes into <dir> (default
bench/results/<time>/):
- bench.json: every benchmark's results, with its command, wall time and exit status, the
  machine and the commit measured (`bench/plots.py bench.json` re-plots it);
- the PNGs of bench/plots.py (when matplotlib is installed: `make bench` installs it).
A benchmark that fails is reported (the tail of its log) and the others still run; the exit
status is then 1. `--quick` runs tiny sizes (about a minute): a smoke test, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, host_probe_ms, shown

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TIMEOUT_S = 20 * 60  # per benchmark: far above what the default sizes take

# name: (script, default arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "invoke": ("invoke.py",
               ["--cold", "30", "--warm", "1000", "--requests", "2000", "--concurrency", "1,8,16,32,128",
                "--scale-out", "100"],
               ["--cold", "3", "--warm", "200", "--after-idle", "3", "--requests", "300", "--concurrency", "1,16",
                "--scale-out", "20"]),
    "hops": ("hops.py", ["--invokes", "2000"], ["--invokes", "200"]),
    "cpu": ("cpu.py", ["--invokes", "3000", "--clients", "16"], ["--invokes", "300", "--clients", "8"]),
    "runtime_ceiling": ("runtime_ceiling.py", ["--runtimes", "1,2,16", "--pauses-us", "0,300", "--seconds", "3"],
                ["--runtimes", "1,2", "--seconds", "1"]),
    "async_invoke": ("async_invoke.py",
                     ["--sequential", "500", "--requests", "1500", "--concurrency", "16,64", "--e2e", "200"],
                     ["--sequential", "100", "--requests", "300", "--concurrency", "16", "--e2e", "50"]),
    "logs": ("logs.py",
             ["--lines", "50000", "--runs", "2", "--stored", "200000", "--queries", "20"],
             ["--lines", "10000", "--runs", "1", "--stored", "20000", "--queries", "5"]),
    "keepalive": ("keepalive.py",
                  ["--functions", "200", "--hours", "24"],
                  ["--functions", "40", "--hours", "6"]),
    "sandboxes": ("sandboxes.py", ["--count", "200", "--concurrency", "16"], ["--count", "30", "--concurrency", "8"]),
    "warm_memory": ("warm_memory.py", ["--invokes", "40000", "--every", "10000"],
                    ["--invokes", "2000", "--every", "1000"]),
}
TITLES = {"invoke": "synchronous invoke", "hops": "the warm invoke path, hop by hop",
          "cpu": "machine CPU per warm invocation, by part",
          "runtime_ceiling": "the runtime alone, against a minimal Runtime API (the sandbox side's ceiling)",
          "async_invoke": "asynchronous invoke", "logs": "logs", "keepalive": "keep-alive policy (simulation)",
          "sandboxes": "sandbox creation and density (backends alone)",
          "warm_memory": "a warm sandbox's memory over many invocations (leaks)"}


def git_commit() -> str | None:
    """The commit measured, with "+dirty" when the work tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def run_one(name: str, argv: list[str], out: Path, log: Path) -> tuple[int, float]:
    """Run one benchmark to completion (exit status, wall seconds). It gets its own process group,
    so that an interrupt or a timeout can stop it and the servers it started, and nothing else."""
    started = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, str(BENCH / BENCHMARKS[name][0]), *argv, "--out", str(out)],
                                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout=TIMEOUT_S)
        except (KeyboardInterrupt, subprocess.TimeoutExpired) as exc:
            stop(proc)
            if isinstance(exc, KeyboardInterrupt):
                raise
            sink.write(f"\nrun_all: stopped after {TIMEOUT_S} s\n")
            status = -1
    return status, time.perf_counter() - started


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the benchmark's group (it stops its servers in `finally`), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tables(data: dict[str, Any]) -> str:
    """Each benchmark's own table (its module's `report`), one after the other."""
    buffer = io.StringIO()
    for name, entry in data["benchmarks"].items():
        probe = entry.get("host_probe_ms")  # common.host_probe_ms before and after: the host's speed then
        print(f"\n=== {TITLES[name]}: bench/{BENCHMARKS[name][0]}, {entry['wall_s']:.0f} s"
              + (f" (host probe {probe[0]:.1f} / {probe[1]:.1f} ms)" if probe else "") + " ===", file=buffer)
        if entry["results"] is None:
            print(f"FAILED (exit status {entry['exit_status']}); the end of {entry['log']}:", file=buffer)
            print(entry["log_tail"], file=buffer)
            continue
        try:
            with contextlib.redirect_stdout(buffer):
                importlib.import_module(name).report(entry["results"])
        except Exception as exc:  # noqa: BLE001 (a report bug must not lose the run: the JSON has it all)
            print(f"(no table: {type(exc).__name__}: {exc})", file=buffer)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test (about a minute)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(BENCHMARKS),
                        help="comma-separated: " + ",".join(BENCHMARKS))
    parser.add_argument("--out-dir", type=Path, help="default bench/results/<time>/")
    args = parser.parse_args()
    if unknown := set(args.only) - set(BENCHMARKS):
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    out_dir = args.out_dir or RESULTS / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)

    data: dict[str, Any] = {
        "benchmark": "all",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_average_start": os.getloadavg()},
        "commit": git_commit(),
        "benchmarks": {},
    }
    started = time.perf_counter()
    print(f"Firebox benchmarks -> {shown(out_dir)}/ ({'quick' if args.quick else 'default'} sizes, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f})")
    if os.geteuid() != 0 and "sandboxes" in args.only:
        print("sandboxes: skipped (the isolated backends need root)")
        args.only = [name for name in args.only if name != "sandboxes"]
    for i, name in enumerate(args.only, 1):
        script, full, quick = BENCHMARKS[name]
        argv = quick if args.quick else full
        out, log = out_dir / f"{name}.json", out_dir / f"{name}.log"
        probe = host_probe_ms()
        print(f"[{i}/{len(args.only)}] {name}: bench/{script} {' '.join(argv)} (host probe {probe:.1f} ms)", flush=True)
        status, wall = run_one(name, argv, out, log)
        results = json.loads(out.read_text()) if status == 0 and out.exists() else None
        tail = "" if results else "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        print(f"      {'done' if results else 'FAILED'} in {wall:.0f} s", flush=True)
        data["benchmarks"][name] = {"command": [f"bench/{script}", *argv], "exit_status": status, "wall_s": wall,
                                    "log": shown(log), "log_tail": tail, "results": results,
                                    "host_probe_ms": [probe, host_probe_ms()]}
        out.unlink(missing_ok=True)  # bench.json holds it
    data["wall_s"] = time.perf_counter() - started
    data["machine"]["load_average_end"] = os.getloadavg()
    combined = out_dir / "bench.json"
    combined.write_text(json.dumps(data, indent=2))

    print(tables(data))
    import plots

    if plots.available():
        pngs = plots.plot_file(combined)
        print(f"wrote {shown(combined)} and {len(pngs)} plots: " + ", ".join(p.name for p in pngs))
    else:
        print(f"wrote {shown(combined)}; no plots: matplotlib is not installed (`make bench` installs it)")
    failed = [name for name, entry in data["benchmarks"].items() if entry["results"] is None]
    print(f"all benchmarks took {data['wall_s'] / 60:.1f} min" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
