"""Invoke benchmark: cold start, warm latency and throughput of a Python hello function, next to
a raw HTTP hello baseline measured in the same run (the ratio is the figure).

    .venv/bin/python bench/invoke.py [--cold 30] [--warm 1000] [--after-idle 20] [--requests 3000]
                                     [--rounds 3] [--concurrency 1,8,16,32,128] [--scale-out 100]
                                     [--out FILE]

It starts a real Firebox server (isolated sandboxes, fresh data dir) and a bare uvicorn app on free
ports, drives both with the same minimal keep-alive HTTP/1.1 client (bench/common.py: an asyncio
Protocol on uvloop, as lean as we could make it, since it runs on the same 2 CPUs; it costs the
same on both sides), prints a table, and writes JSON to bench/results/ (or `--out`);
`bench/plots.py` draws it.

What is measured, and against what:
- cold start of a Python hello, a Node.js hello and a Python function importing boto3, client-
  observed, with its breakdown (below); baseline: the same handler run as a bare process
  (interpreter start, import, call, exit: what a cold start costs without a platform);
- warm invoke latency, sequential, and the platform overhead (client time minus the REPORT's
  Duration); baseline: the raw uvicorn hello;
- the same warm invoke after IDLE_S of silence (`--after-idle` of them, one Firebox and one
  baseline request in turn): what a function called now and then sees. On the 2-core VM every
  step is several times slower after a pause, the baseline's as much as ours (its CPUs idle
  and wake up cold), so the cold starts below pay that too;
- throughput and latency at each number of concurrent clients (keep-alive connections), each
  row after an untimed warm-up at its concurrency, so that it measures warm sandboxes only, and
  its first 2 x clients requests untimed on its own connections (`concurrently`'s ramp), so that
  it measures clients out of step: 16 requests sent at the same instant on 16 new connections
  answered in 8-40 ms, and were up to half of the 30 slowest of a 16-client row of 3,000; each
  row is `--rounds` rounds of Firebox and the baseline in turn, its rates and ratio their
  medians (`alternated`);
- scale-out: `--scale-out` simultaneous first invocations of a function that sleeps 0.5 s: time
  until all are answered, and sandboxes created per second (the server's count, polled);
- density: PSS of everything the server started, per idle sandbox, and how many fit in 1 GB.

The cold-start breakdown, per cold start (client-observed = the sum):
- handler: the REPORT's Duration;
- runtime init: the REPORT's Init Duration minus the sandbox spawn (for a stem cell: linking the
  code and importing the handler; otherwise the runtime's start and the import);
- sandbox spawn: the backend's spawn time in the request path (network namespace, uid, cgroup,
  bwrap), from GET /_firebox/stats before and after (0 when a pre-started stem cell was taken);
- request hops: frontend, invoker and Runtime API round trip, taken as the warm platform
  overhead's median (a warm invoke pays them too);
- placement: the rest, the cold path outside the sandbox (worker manager, placement, code
  cache, taking a stem cell, or waiting for one when the pool is empty): client-observed minus
  all of the above.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

from common import (
    Connection,
    cdf,
    host_probe_ms,
    out_argument,
    percentile,
    pss_kb,
    publish,
    run_loop,
    samples,
    start_firebox,
    summary,
)

ROOT = Path(__file__).resolve().parents[1]
# The copy of boto3 that Python sandboxes get (bin/setup installs it); the bare-process baseline uses it too.
SANDBOX_BOTO3 = ROOT / ".venv" / "firebox-lambda-python"
GOAL_CLIENTS, GOAL_P99_MS = 16, 10.0  # the goal: at 16 concurrent clients, p99 <= 10 ms
HELLO = "def handler(event, context):\n    return {'hello': 'world'}\n"
BASELINE_APP = textwrap.dedent(
    """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"hello":"world"}'})
    """
)


async def sequential(port: int, path: str, count: int) -> list[float]:
    conn = await Connection.open("127.0.0.1", port)
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        status, _ = await conn.post(path, b"{}")
        timings.append((time.perf_counter() - start) * 1000)
        assert status == 200, status
    await conn.close()
    return timings


IDLE_S = 0.25  # the pause before each request of `after_idle`


async def after_idle(port: int, path: str, baseline_port: int, count: int) -> tuple[list[float], list[float]]:
    """`count` requests to each of Firebox and the baseline, in turn, each after IDLE_S of
    silence: (Firebox's latencies, the baseline's), in ms."""
    conns = [await Connection.open("127.0.0.1", port), await Connection.open("127.0.0.1", baseline_port)]
    timings: tuple[list[float], list[float]] = ([], [])
    for _ in range(count):
        for conn, target, out in zip(conns, (path, "/"), timings, strict=True):
            await asyncio.sleep(IDLE_S)
            start = time.perf_counter()
            status, _ = await conn.post(target, b"{}")
            out.append((time.perf_counter() - start) * 1000)
            assert status == 200, status
    for conn in conns:
        await conn.close()
    return timings


async def concurrently(port: int, path: str, requests: int, concurrency: int,
                       ramp: int = 0) -> tuple[list[float], float]:
    """`requests` POSTs from `concurrency` clients, each on its own keep-alive connection and
    sending its next request when the last is answered: (each latency in ms, seconds in all).
    `ramp` more go first, untimed, on the same connections: the clients start in step (all at
    once on new connections), and by the end of the ramp they no longer are. The time runs from
    the first timed request, while the ramp's last are still in flight (so it is a little long)."""
    connections = [await Connection.open("127.0.0.1", port) for _ in range(concurrency)]
    remaining = requests + ramp
    latencies: list[float] = []
    start = 0.0

    async def drive(conn: Connection) -> None:
        nonlocal remaining, start
        while remaining > 0:
            timed = remaining <= requests
            remaining -= 1
            sent = time.perf_counter()
            if timed and not start:
                start = sent
            status, _ = await conn.post(path, b"{}")
            if timed:
                latencies.append((time.perf_counter() - sent) * 1000)
            assert status == 200, status

    await asyncio.gather(*(drive(c) for c in connections))
    elapsed = time.perf_counter() - start
    for conn in connections:
        await conn.close()
    return latencies, elapsed


async def throughput(port: int, path: str, requests: int, concurrency: int, ramp: int = 0) -> dict[str, float]:
    latencies, elapsed = await concurrently(port, path, requests, concurrency, ramp)
    return _rates(concurrency, latencies, [requests / elapsed])


def _rates(concurrency: int, latencies: list[float], per_s: list[float]) -> dict[str, Any]:
    return {"concurrency": concurrency, "requests": len(latencies), "per_s": statistics.median(per_s),
            "rounds_per_s": per_s, "p50_ms": statistics.median(latencies), "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies), "cdf": cdf(latencies)}


async def alternated(sides: dict[str, tuple[int, str]], requests: int, concurrency: int,
                     rounds: int) -> dict[str, Any]:
    """A throughput row measured in `rounds` rounds, each side once per round (`requests` each,
    the order swapped every round): each side's rate is the median of its rounds', the ratio the
    median of the rounds' ratios (first side over second), and the latencies are pooled. The
    host's speed changes from one second to the next on this VM (`common.host_probe_ms`: 10 to
    23 ms for the same work, within a run), so that two sides measured once each, one after the
    other, may each have had a different host; a round's two are a second apart at most."""
    latencies: dict[str, list[float]] = {name: [] for name in sides}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(rounds):
        for name in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
            port, path = sides[name]
            got, elapsed = await concurrently(port, path, requests, concurrency, ramp=2 * concurrency)
            latencies[name] += got
            rates[name].append(requests / elapsed)
    first, second = sides
    ratios = [a / b for a, b in zip(rates[first], rates[second], strict=True)]
    return {**{name: _rates(concurrency, latencies[name], rates[name]) for name in sides},
            "ratio": statistics.median(ratios), "round_ratios": ratios}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


KINDS = {
    # kind: (runtime, handler, files)
    "python": ("python3.11", "app.handler", {"app.py": HELLO}),
    "node": ("nodejs20.x", "index.handler",
             {"index.js": "exports.handler = async () => ({hello: 'world'});\n"}),
    "boto3": ("python3.11", "app.handler",
              {"app.py": "import boto3\n\ndef handler(event, context):\n    return {'boto3': boto3.__version__}\n"}),
    "sleepy": ("python3.11", "app.handler",
               {"app.py": "import time\n\ndef handler(event, context):\n    time.sleep(0.5)\n    return 1\n"}),
}


def make_zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def create_functions(endpoint: str, names: list[str], kind: str = "python") -> None:
    import boto3

    client = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    runtime, handler, files = KINDS[kind]
    code = make_zip(files)
    for name in names:
        client.create_function(FunctionName=name, Runtime=runtime, Role="arn:aws:iam::000000000000:role/bench",
                               Handler=handler, Code={"ZipFile": code}, Timeout=30)
    deadline = time.monotonic() + 120
    for name in names:
        while client.get_function_configuration(FunctionName=name)["State"] != "Active":
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not become Active")
            time.sleep(0.02)


def report_fields(headers: dict[str, str]) -> dict[str, float]:
    """The REPORT line's figures from an X-Amz-Log-Result header."""
    tail = base64.b64decode(headers.get("x-amz-log-result", "")).decode(errors="replace")
    line = next((x for x in tail.splitlines() if x.startswith("REPORT ")), "")
    fields = {}
    for part in line.split("\t")[1:]:
        name, _, value = part.partition(": ")
        if value.endswith(" ms"):
            fields[name] = float(value[:-3])
    return fields


async def platform_stats(port: int) -> dict[str, Any] | None:
    """GET /_firebox/stats (the components' statistics), or None when this server lacks it."""
    try:
        conn = await Connection.open("127.0.0.1", port)
        try:
            return await conn.get_json("/_firebox/stats")
        finally:
            await conn.close()
    except (OSError, ValueError):
        return None


def spawn_in_path(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[float | None, bool]:
    """(ms the backend spent spawning the sandbox of one cold start, whether a stem cell was taken)
    from the statistics just before and just after it. A stem refill spawned meanwhile, in the
    background, is not in the request path: its share of the spawn time is taken out."""
    try:
        b, a = before["backend"], after["backend"]  # type: ignore[index]
        stems_b, stems_a = before.get("stem_cells", {}), after.get("stem_cells", {})  # type: ignore[union-attr]
        spawned = a["spawned"] - b["spawned"]
        spent = (a["mean_spawn_ms"] or 0) * a["spawned"] - (b["mean_spawn_ms"] or 0) * b["spawned"]
    except (KeyError, TypeError):
        return None, False
    if stems_a.get("taken", 0) > stems_b.get("taken", 0):
        return 0.0, True
    in_path = spawned - (stems_a.get("spawned", 0) - stems_b.get("spawned", 0))
    return (max(0.0, spent * in_path / spawned) if spawned > 0 and in_path > 0 else 0.0), False


async def cold_starts(port: int, names: list[str], gap_s: float = 0.0) -> dict[str, Any]:
    """First invocations, one at a time (`gap_s` apart, so background refills such as the stem
    cell pool can keep up, as between real cold starts): client time and the REPORT's figures,
    and the server's spawn time; `breakdown` splits them once the warm overhead is known."""
    raw: dict[str, list[float]] = {"client": [], "init": [], "duration": [], "spawn": []}
    stem_taken, spawn_known = 0, True
    for name in names:
        await asyncio.sleep(gap_s)
        before = await platform_stats(port)
        conn = await Connection.open("127.0.0.1", port)
        start = time.perf_counter()
        status, headers, _ = await conn.exchange(f"/2015-03-31/functions/{name}/invocations", b"{}",
                                                 {"X-Amz-Log-Type": "Tail"})
        total = (time.perf_counter() - start) * 1000
        await conn.close()
        assert status == 200, status
        spawn, taken = spawn_in_path(before, await platform_stats(port))
        fields = report_fields(headers)
        raw["client"].append(total)
        raw["init"].append(fields.get("Init Duration", 0.0))
        raw["duration"].append(fields.get("Duration", 0.0))
        raw["spawn"].append(spawn or 0.0)
        spawn_known = spawn_known and spawn is not None
        stem_taken += taken
    platform = [c - i - d for c, i, d in zip(raw["client"], raw["init"], raw["duration"])]
    return {"client": summary(raw["client"]), "init": summary(raw["init"]), "platform_and_spawn": summary(platform),
            "stem_cells_taken": stem_taken, "spawn_known": spawn_known,
            "samples": {k: samples(v) for k, v in raw.items()}}


def breakdown(cold: dict[str, Any], hops_ms: float) -> dict[str, dict[str, float]]:
    """Each cold start split into handler, runtime init, sandbox spawn, request hops (`hops_ms`,
    the warm overhead's median) and placement (the rest): a summary of each part."""
    s = cold["samples"]
    parts: dict[str, list[float]] = {"handler": s["duration"], "runtime_init": [], "spawn": s["spawn"],
                                     "hops": [hops_ms] * len(s["client"]), "placement": []}
    for client, init, duration, spawn in zip(s["client"], s["init"], s["duration"], s["spawn"]):
        parts["runtime_init"].append(init - spawn)
        parts["placement"].append(client - init - duration - hops_ms)
    return {name: summary(values) for name, values in parts.items()}


def bare_process(kind: str, runs: int) -> dict[str, Any] | None:
    """The cold-start baseline: the same handler run as a bare process on this host, with the
    interpreter a sandbox gets (start, import, call, print, exit), `runs` times; None when that
    interpreter is missing."""
    runtime, handler, files = KINDS[kind]
    module, function = handler.rsplit(".", 1)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    if runtime.startswith("python"):
        exe = shutil.which(runtime, path="/usr/bin:/usr/local/bin")
        code = (f"import json, sys; sys.path.insert(0, '.'); from {module} import {function}; "
                f"print(json.dumps({function}({{}}, None)))")
        if kind == "boto3":
            env["PYTHONPATH"] = str(SANDBOX_BOTO3)
    else:
        exe = shutil.which("node", path="/usr/bin:/usr/local/bin")
        code = f"require('./{module}.js').{function}({{}}).then(r => console.log(JSON.stringify(r)))"
    if exe is None:
        return None
    timings = []
    with tempfile.TemporaryDirectory(prefix="firebox-bench-bare-") as work:
        for name, text in files.items():
            Path(work, name).write_text(text)
        for _ in range(runs):
            start = time.perf_counter()
            done = subprocess.run([exe, "-c" if exe.rsplit("/", 1)[-1].startswith("python") else "-e", code],
                                  cwd=work, env=env, capture_output=True, timeout=60, check=False)
            timings.append((time.perf_counter() - start) * 1000)
            if done.returncode != 0:
                raise SystemExit(f"bare {kind} process failed: {done.stderr.decode(errors='replace')[-500:]}")
    return {"command": exe, **summary(timings)}


async def overhead(port: int, path: str, count: int) -> dict[str, float]:
    """Client-observed latency minus the handler's own Duration (the REPORT's figure)."""
    conn = await Connection.open("127.0.0.1", port)
    values = []
    for _ in range(count):
        start = time.perf_counter()
        status, headers, _ = await conn.exchange(path, b"{}", {"X-Amz-Log-Type": "Tail"})
        total = (time.perf_counter() - start) * 1000
        assert status == 200, status
        values.append(total - report_fields(headers).get("Duration", 0.0))
    await conn.close()
    return summary(values)


async def scale_out(port: int, name: str, count: int) -> dict[str, Any]:
    """`count` simultaneous first invocations of a function whose handler sleeps 0.5 s: when
    each is answered, and (polling GET /_firebox/stats every 50 ms on its own connection) how
    many sandboxes the worker manager has created (initialised: ready to run) and is starting,
    by when."""
    connections = [await Connection.open("127.0.0.1", port) for _ in range(count)]
    before = await platform_stats(port)
    created_at: list[list[float]] = []  # [seconds since the start, sandboxes created since, starting now]
    answered_at: list[float] = []
    done = asyncio.Event()
    start = time.perf_counter()

    async def one(conn: Connection) -> int:
        status, _ = await conn.post(f"/2015-03-31/functions/{name}/invocations", b"{}")
        answered_at.append(time.perf_counter() - start)
        return status

    async def poll() -> None:
        if before is None or "workers" not in before:
            return
        stats_conn = await Connection.open("127.0.0.1", port)
        try:
            while True:
                stats = await stats_conn.get_json("/_firebox/stats")
                created = stats["workers"]["created"] - before["workers"]["created"]
                created_at.append([round(time.perf_counter() - start, 4), created, stats["workers"]["starting"]])
                if done.is_set() or created >= count:
                    return
                await asyncio.sleep(0.05)
        finally:
            await stats_conn.close()

    poller = asyncio.create_task(poll())
    statuses = await asyncio.gather(*(one(c) for c in connections))
    elapsed = time.perf_counter() - start
    done.set()
    await poller
    for conn in connections:
        await conn.close()
    assert all(status == 200 for status in statuses), statuses
    out: dict[str, Any] = {"invocations": count, "handler_s": 0.5, "all_answered_s": elapsed,
                           "first_answered_s": min(answered_at),
                           "sandboxes_per_s": count / max(elapsed - 0.5, 1e-6),  # client-side estimate
                           "answered_at_s": samples(sorted(answered_at)), "created_at": created_at}
    if created_at:
        created = created_at[-1][1]
        # The rate: sandboxes created over the time until the last one was (first poll to show it).
        last = next(t for t, n, _ in created_at if n == created)
        out.update({"sandboxes_created": created, "created_in_s": last,
                    "created_per_s": created / max(last, 1e-6)})
    return out


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def density(server_pid: int, sandboxes: int) -> dict[str, Any]:
    """PSS of everything the server started (bwrap, sandbox inits, runtimes) per idle sandbox
    (idle pre-started stem cells count as sandboxes), and the server's own PSS beside it. Also
    by runtime: the median PSS of one sandbox (all its processes) of each, and the zygotes'."""
    total_kb = zygotes_kb = 0
    by_runtime: dict[str, list[int]] = {}
    for namespace, pids in sandbox_processes(server_pid).items():
        kb = sum(pss_kb(pid) for pid in pids)
        total_kb += kb
        if namespace is None:
            zygotes_kb += kb
            continue
        comms = {_comm(pid) for pid in pids}
        runtime = "nodejs" if "node" in comms else "python" if any(c.startswith("python") for c in comms) else "other"
        by_runtime.setdefault(runtime, []).append(kb)
    per_sandbox_mb = total_kb / 1024 / max(sandboxes, 1)
    return {"sandboxes": sandboxes, "pss_total_mb": total_kb / 1024, "pss_per_sandbox_mb": per_sandbox_mb,
            "per_gb": 1024 / per_sandbox_mb, "server_pss_mb": pss_kb(server_pid) / 1024,
            "by_runtime": {name: {"sandboxes": len(kbs), "pss_median_mb": statistics.median(kbs) / 1024}
                           for name, kbs in sorted(by_runtime.items())},
            "zygotes_pss_mb": zygotes_kb / 1024}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    results: dict[str, Any] = {"benchmark": "invoke",
                               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "load_average": os.getloadavg()},
                               "settings": {k: v for k, v in vars(args).items() if k != "baseline_port"}}
    with tempfile.TemporaryDirectory(prefix="firebox-bench-") as data_dir:
        firebox, fport = start_firebox(data_dir, env)
        app_dir = Path(data_dir) / "baseline"
        app_dir.mkdir()
        (app_dir / "baseline_app.py").write_text(BASELINE_APP)
        baseline = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "baseline_app:app", "--port", str(args.baseline_port), "--loop", "uvloop",
             "--http", "httptools", "--no-access-log", "--log-level", "warning"],
            cwd=app_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            endpoint = f"http://127.0.0.1:{fport}"
            create_functions(endpoint, ["hello"])
            results["cold_start"] = {}
            results["cold_baseline"] = {}
            for kind in ("python", "node", "boto3") if args.cold > 0 else ():
                names = [f"cold-{kind}-{i}" for i in range(args.cold)]
                create_functions(endpoint, names, kind)
                results["cold_start"][kind] = await cold_starts(fport, names, args.cold_gap_ms / 1000)
                results["cold_baseline"][kind] = await asyncio.to_thread(bare_process, kind, args.cold)
            invoke_path = "/2015-03-31/functions/hello/invocations"
            await sequential(fport, invoke_path, 50)  # warm up
            for _ in range(100):
                try:
                    await sequential(args.baseline_port, "/", 1)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            warm = await sequential(fport, invoke_path, args.warm)
            baseline_warm = await sequential(args.baseline_port, "/", args.warm)
            results["warm"] = summary(warm)
            results["baseline_warm"] = summary(baseline_warm)
            # All --warm of them: the p99 of 500 (their fifth slowest) swung 0.95-1.89 ms.
            results["warm_overhead"] = await overhead(fport, invoke_path, args.warm)
            if args.after_idle:
                idle, idle_base = await after_idle(fport, invoke_path, args.baseline_port, args.after_idle)
                results["after_idle"] = {"pause_s": IDLE_S, "firebox": summary(idle), "baseline": summary(idle_base)}
            results["samples"] = {"warm": samples(warm), "baseline_warm": samples(baseline_warm)}
            for cold in results["cold_start"].values():
                cold["breakdown"] = breakdown(cold, results["warm_overhead"]["p50_ms"])
            results["throughput"] = []
            for concurrency in args.concurrency:
                # Untimed first: a row measures warm sandboxes only (at 128 clients up to 96
                # of them would otherwise be cold starts inside the timed run).
                await throughput(fport, invoke_path, 2 * concurrency, concurrency)
                await throughput(args.baseline_port, "/", 2 * concurrency, concurrency)
                probe = host_probe_ms()
                row = await alternated({"firebox": (fport, invoke_path), "baseline": (args.baseline_port, "/")},
                                       args.requests, concurrency, args.rounds)
                results["throughput"].append({**row, "host_probe_ms": [probe, host_probe_ms()]})
            goal = next((t["firebox"] for t in results["throughput"] if t["firebox"]["concurrency"] == GOAL_CLIENTS), None)
            if goal is not None:
                results["goal"] = {"clients": GOAL_CLIENTS, "p99_ms_max": GOAL_P99_MS, "p99_ms": goal["p99_ms"],
                                   "met": goal["p99_ms"] <= GOAL_P99_MS}
            if args.scale_out:
                create_functions(endpoint, ["scale"], "sleepy")
                results["scale_out"] = await scale_out(fport, "scale", args.scale_out)
                results["density"] = density(firebox.pid, sandbox_count(firebox.pid))
                if (stats := await platform_stats(fport)) is not None:  # a cross-check of the count
                    results["density"]["backend_live"] = stats.get("backend", {}).get("live")
        finally:
            firebox.terminate()
            baseline.terminate()
            firebox.wait(timeout=60)
            baseline.wait(timeout=30)
    return results


def sandbox_processes(server_pid: int) -> dict[str | None, list[int]]:
    """The server's descendants by sandbox: one pid namespace each, whatever its process tree
    (bwrap and its init, or a runtime forked from a zygote); None: the server's own namespace
    (zygotes)."""
    own = os.readlink(f"/proc/{server_pid}/ns/pid")
    found: dict[str | None, list[int]] = {}
    for pid in descendants(server_pid):
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/pid")
        except OSError:
            continue
        found.setdefault(None if namespace == own else namespace, []).append(pid)
    return found


def sandbox_count(server_pid: int) -> int:
    """Sandboxes alive now: the pid namespaces of the server's descendants other than its own."""
    return sum(1 for namespace in sandbox_processes(server_pid) if namespace is not None)


PARTS = (("runtime_init", "runtime init (Init Duration minus spawn)"),
         ("spawn", "sandbox spawn (server-side, in the request path)"),
         ("placement", "placement, lease, code cache, stem cell (the rest)"),
         ("hops", "request hops (= warm platform overhead p50)"),
         ("handler", "handler (REPORT Duration)"))


def report(results: dict[str, Any]) -> None:
    """The table: every figure, with its baseline and the ratio where there is one. Works on
    older JSON files too (what they lack is left out)."""
    m = results["machine"]
    print(f"Firebox invoke benchmark ({m['cpus']} cpus, Python {m['python']}"
          + (f", load average {m['load_average'][0]:.1f} at the start" if "load_average" in m else "") + ")")
    print("baselines: a raw uvicorn hello (warm, throughput); the same handler as a bare process (cold)\n")
    print(f"{'measure':<52}{'p50':>10}{'p99':>10}{'base p50':>10}{'base p99':>10}{'ratio p50':>11}{'p99':>7}")

    def ms(value: float) -> str:
        return f"{value:.1f}ms" if value >= 100 else f"{value:.2f}ms"

    def row(label: str, stats: dict[str, float], base: dict[str, float] | None = None) -> None:
        line = f"{label:<52}{ms(stats['p50_ms']):>10}{ms(stats['p99_ms']):>10}"
        if base:
            line += (f"{ms(base['p50_ms']):>10}{ms(base['p99_ms']):>10}"
                     f"{stats['p50_ms'] / base['p50_ms']:>10.1f}x{stats['p99_ms'] / base['p99_ms']:>6.1f}x")
        print(line)

    for kind, cold in results["cold_start"].items():
        row(f"cold start, {kind} hello, client-observed", cold["client"],
            (results.get("cold_baseline") or {}).get(kind))
        if "breakdown" in cold:
            for part, label in PARTS:
                if part != "spawn" or cold.get("spawn_known", True):
                    row(f"  {label}", cold["breakdown"][part])
            if "stem_cells_taken" in cold:
                print(f"  {'stem cells taken':<50}{cold['stem_cells_taken']:>7}/{cold['client']['n']}")
        else:
            row("  of which runtime init (REPORT Init Duration)", cold["init"])
            row("  of which platform: code cache, sandbox, hops", cold["platform_and_spawn"])
    warm, base = results["warm"], results["baseline_warm"]
    row("warm invoke, sequential (baseline: raw uvicorn)", warm, base)
    row("warm platform overhead (client minus Duration)", results["warm_overhead"], base)
    if idle := results.get("after_idle"):
        row(f"warm invoke after {idle['pause_s'] * 1000:.0f} ms idle (baseline: the same)", idle["firebox"],
            idle["baseline"])

    print(f"\nthroughput: medians of {results['settings']['rounds']} alternated rounds (rates and their ratio); "
          "latencies pooled")
    print(f"{'clients':<9}{'firebox/s':>11}{'base/s':>9}{'ratio':>7}{'fb p50':>10}{'fb p99':>10}"
          f"{'base p50':>10}{'base p99':>10}{'p99 ratio':>10}{'host probe':>14}")
    for item in results["throughput"]:
        f, b = item["firebox"], item["baseline"]
        probe = item.get("host_probe_ms")  # before and after the row (common.host_probe_ms)
        print(f"{f['concurrency']:<9}{f['per_s']:>11.0f}{b['per_s']:>9.0f}{item['ratio']:>7.3f}"
              f"{ms(f['p50_ms']):>10}{ms(f['p99_ms']):>10}{ms(b['p50_ms']):>10}{ms(b['p99_ms']):>10}"
              f"{f['p99_ms'] / b['p99_ms']:>9.1f}x" + (f"{probe[0]:>7.1f}/{probe[1]:<4.1f}ms" if probe else ""))
    if goal := results.get("goal"):
        print(f"goal: at {goal['clients']} clients p99 <= {goal['p99_ms_max']:g} ms: p99 is {goal['p99_ms']:.2f} ms, "
              + ("met" if goal["met"] else "NOT met"))

    if "scale_out" in results:
        so, dn = results["scale_out"], results["density"]
        print(f"\nscale-out: {so['invocations']} simultaneous first invocations (handler sleeps 0.5 s): "
              f"all answered in {so['all_answered_s']:.2f} s"
              + (f", the first in {so['first_answered_s']:.2f} s" if "first_answered_s" in so else ""))
        if "created_per_s" in so:
            print(f"  sandboxes created/s: {so['created_per_s']:.0f} ({so['sandboxes_created']} created in "
                  f"{so['created_in_s']:.2f} s, the server's count)")
        else:
            print(f"  sandboxes created/s: ~{so['sandboxes_per_s']:.0f} (invocations / (all answered - 0.5 s))")
        print(f"density: {dn['pss_per_sandbox_mb']:.1f} MB PSS per idle sandbox over {dn['sandboxes']} sandboxes"
              f" -> {dn['per_gb']:.0f} per GB"
              + (f" (the server itself: {dn['server_pss_mb']:.0f} MB)" if "server_pss_mb" in dn else ""))
        if dn.get("by_runtime"):
            print("  one sandbox, median PSS: " + ", ".join(
                f"{name} {row['pss_median_mb']:.2f} MB (of {row['sandboxes']})" for name, row in dn["by_runtime"].items())
                + f"; the zygotes: {dn['zygotes_pss_mb']:.1f} MB in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=30,
                        help="cold starts per kind (python, node, boto3); a p50 of 10 swung by 0.7 ms between runs")
    parser.add_argument("--cold-gap-ms", type=float, default=250.0, help="pause between cold starts")
    parser.add_argument("--warm", type=int, default=1000)
    parser.add_argument("--after-idle", type=int, default=20,
                        help=f"warm invokes after {IDLE_S * 1000:.0f} ms of silence, and as many baseline requests (0: none)")
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests per concurrency level and round (each side)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per concurrency level, the two sides alternated (see `alternated`)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 16, 32, 128])
    parser.add_argument("--scale-out", type=int, default=100, help="simultaneous first invocations (0: skip)")
    parser.add_argument("--baseline-port", type=int, default=0, help="0: a free port")
    out_argument(parser, "invoke")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.baseline_port = args.baseline_port or free_port()
    results = run_loop(run(args))
    publish(results, args.out, "invoke", report)


if __name__ == "__main__":
    main()
