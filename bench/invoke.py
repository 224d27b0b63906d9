"""Invoke benchmark: cold start, warm latency and throughput of a Python hello function, next to
a raw HTTP hello baseline measured in the same run (the ratio is the figure).

    .venv/bin/python bench/invoke.py [--cold 20] [--warm 1000] [--requests 4000] [--concurrency 1,8,32]

It starts a real Firebox server (isolated sandboxes, fresh data dir) and a bare uvicorn app on free
ports, drives both with the same minimal keep-alive HTTP/1.1 client (asyncio streams, so the
client costs the same on both sides), prints a table, and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
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

from common import Connection, percentile, start_firebox, summary

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
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


async def throughput(port: int, path: str, requests: int, concurrency: int) -> dict[str, float]:
    connections = [await Connection.open("127.0.0.1", port) for _ in range(concurrency)]
    remaining = requests
    latencies: list[float] = []

    async def drive(conn: Connection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            status, _ = await conn.post(path, b"{}")
            latencies.append((time.perf_counter() - start) * 1000)
            assert status == 200, status

    start = time.perf_counter()
    await asyncio.gather(*(drive(c) for c in connections))
    elapsed = time.perf_counter() - start
    for conn in connections:
        await conn.close()
    return {"concurrency": concurrency, "requests": requests, "per_s": requests / elapsed,
            "p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 99)}


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


async def cold_starts(port: int, names: list[str], gap_s: float = 0.0) -> dict[str, Any]:
    """First invocations, one at a time (`gap_s` apart, so background refills such as the stem
    cell pool can keep up, as between real cold starts): client time and its breakdown."""
    totals, inits, platform = [], [], []
    for name in names:
        await asyncio.sleep(gap_s)
        conn = await Connection.open("127.0.0.1", port)
        start = time.perf_counter()
        status, headers, _ = await conn.exchange(f"/2015-03-31/functions/{name}/invocations", b"{}",
                                                 {"X-Amz-Log-Type": "Tail"})
        total = (time.perf_counter() - start) * 1000
        await conn.close()
        assert status == 200, status
        fields = report_fields(headers)
        totals.append(total)
        inits.append(fields.get("Init Duration", 0.0))
        platform.append(total - fields.get("Init Duration", 0.0) - fields.get("Duration", 0.0))
    return {"client": summary(totals), "init": summary(inits), "platform_and_spawn": summary(platform)}


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


async def scale_out(port: int, name: str, count: int) -> dict[str, float]:
    """`count` simultaneous first invocations of a function whose handler sleeps 0.5 s."""
    connections = [await Connection.open("127.0.0.1", port) for _ in range(count)]
    start = time.perf_counter()
    answers = await asyncio.gather(*(c.post(f"/2015-03-31/functions/{name}/invocations", b"{}") for c in connections))
    elapsed = time.perf_counter() - start
    for conn in connections:
        await conn.close()
    assert all(status == 200 for status, _ in answers), [status for status, _ in answers]
    return {"invocations": count, "all_answered_s": elapsed, "sandboxes_per_s": count / max(elapsed - 0.5, 1e-6)}


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


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def density(server_pid: int, sandboxes: int) -> dict[str, float]:
    """PSS of everything the server started (bwrap, sandbox inits, runtimes) per idle sandbox."""
    total_kb = sum(pss_kb(pid) for pid in descendants(server_pid))
    per_sandbox_mb = total_kb / 1024 / max(sandboxes, 1)
    return {"sandboxes": sandboxes, "pss_per_sandbox_mb": per_sandbox_mb, "per_gb": 1024 / per_sandbox_mb}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
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
            for kind in ("python", "node", "boto3"):
                names = [f"cold-{kind}-{i}" for i in range(args.cold)]
                create_functions(endpoint, names, kind)
                results["cold_start"][kind] = await cold_starts(fport, names, args.cold_gap_ms / 1000)
            invoke_path = "/2015-03-31/functions/hello/invocations"
            await sequential(fport, invoke_path, 50)  # warm up
            for _ in range(100):
                try:
                    await sequential(args.baseline_port, "/", 1)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            results["warm"] = summary(await sequential(fport, invoke_path, args.warm))
            results["baseline_warm"] = summary(await sequential(args.baseline_port, "/", args.warm))
            results["warm_overhead"] = await overhead(fport, invoke_path, min(args.warm, 500))
            results["throughput"] = []
            for concurrency in args.concurrency:
                fire = await throughput(fport, invoke_path, args.requests, concurrency)
                base = await throughput(args.baseline_port, "/", args.requests, concurrency)
                results["throughput"].append({"firebox": fire, "baseline": base, "ratio": fire["per_s"] / base["per_s"]})
            if args.scale_out:
                create_functions(endpoint, ["scale"], "sleepy")
                results["scale_out"] = await scale_out(fport, "scale", args.scale_out)
                results["density"] = density(firebox.pid, sandbox_count(firebox.pid))
        finally:
            firebox.terminate()
            baseline.terminate()
            firebox.wait(timeout=60)
            baseline.wait(timeout=30)
    return results


def sandbox_count(server_pid: int) -> int:
    """Sandboxes alive now: descendants running a bootstrap from /var/runtime (one per sandbox)."""
    count = 0
    for pid in descendants(server_pid):
        try:
            if os.readlink(f"/proc/{pid}/exe").endswith("bwrap"):
                continue  # bwrap and its in-sandbox init carry the same command line
            if b"/var/runtime/" in Path(f"/proc/{pid}/cmdline").read_bytes():
                count += 1
        except OSError:
            continue
    return count


def report(results: dict[str, Any]) -> None:
    warm, base = results["warm"], results["baseline_warm"]
    print(f"\nFirebox invoke benchmark ({results['machine']['cpus']} cpus, Python {results['machine']['python']})")
    print(f"{'measure':<52}{'p50':>10}{'p99':>10}")

    def row(label: str, stats: dict[str, float]) -> None:
        print(f"{label:<52}{stats['p50_ms']:>8.2f}ms{stats['p99_ms']:>8.2f}ms")

    for kind, cold in results["cold_start"].items():
        row(f"cold start, {kind} hello, client-observed", cold["client"])
        row("  of which runtime init (REPORT Init Duration)", cold["init"])
        row("  of which platform: code cache, sandbox, hops", cold["platform_and_spawn"])
    row("warm invoke, sequential", warm)
    row("warm platform overhead (client minus Duration)", results["warm_overhead"])
    row("raw HTTP hello (baseline), sequential", base)
    print(f"{'warm latency ratio (firebox / baseline)':<52}{warm['p50_ms'] / base['p50_ms']:>9.1f}x"
          f"{warm['p99_ms'] / base['p99_ms']:>9.1f}x")
    print(f"\n{'concurrency':<12}{'firebox/s':>12}{'baseline/s':>12}{'ratio':>8}{'fb p50':>10}{'fb p99':>10}")
    for item in results["throughput"]:
        f, b = item["firebox"], item["baseline"]
        print(f"{f['concurrency']:<12}{f['per_s']:>12.0f}{b['per_s']:>12.0f}{item['ratio']:>8.2f}"
              f"{f['p50_ms']:>8.2f}ms{f['p99_ms']:>8.2f}ms")
    if "scale_out" in results:
        so, dn = results["scale_out"], results["density"]
        print(f"\nscale-out: {so['invocations']} simultaneous first invocations answered in {so['all_answered_s']:.2f} s"
              f" ({so['sandboxes_per_s']:.0f} sandboxes/s, handler sleeps 0.5 s)")
        print(f"density: {dn['pss_per_sandbox_mb']:.1f} MB PSS per idle sandbox over {dn['sandboxes']} sandboxes"
              f" -> {dn['per_gb']:.0f} per GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=10, help="cold starts per kind (python, node, boto3)")
    parser.add_argument("--cold-gap-ms", type=float, default=250.0, help="pause between cold starts")
    parser.add_argument("--warm", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 128])
    parser.add_argument("--scale-out", type=int, default=100, help="simultaneous first invocations (0: skip)")
    parser.add_argument("--baseline-port", type=int, default=0, help="0: a free port")
    args = parser.parse_args()
    args.baseline_port = args.baseline_port or free_port()
    results = asyncio.run(run(args))
    report(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"invoke-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
