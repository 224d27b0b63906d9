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


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": statistics.median(values), "p99_ms": percentile(values, 99),
            "mean_ms": statistics.fmean(values)}


class Connection:
    """A keep-alive HTTP/1.1 client connection: just enough to time requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
                "Content-Type: application/json\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            data = b""
            while (size := int((await self.reader.readline()).strip(), 16)) > 0:
                data += await self.reader.readexactly(size + 2)
            await self.reader.readline()
            return int(status_line.split()[1]), data
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()


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


def start(cmd: list[str], env: dict[str, str], ready: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{cmd[0]} exited before it was ready")
        if ready in line:
            return proc, int(line.rstrip().rsplit(":", 1)[1].split()[0].strip("/"))
    raise SystemExit("server did not become ready in 60 s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def hello_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", HELLO)
    return buffer.getvalue()


def create_functions(endpoint: str, names: list[str]) -> None:
    import boto3

    client = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    code = hello_zip()
    for name in names:
        client.create_function(FunctionName=name, Runtime="python3.11", Role="arn:aws:iam::000000000000:role/bench",
                               Handler="app.handler", Code={"ZipFile": code})
    deadline = time.monotonic() + 60
    for name in names:
        while client.get_function_configuration(FunctionName=name)["State"] != "Active":
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not become Active")
            time.sleep(0.02)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    with tempfile.TemporaryDirectory(prefix="firebox-bench-") as data_dir:
        firebox, fport = start([sys.executable, "-m", "firebox", "serve", "--port", "0", "--data-dir", data_dir],
                               env, "Firebox ready at ")
        app_dir = Path(data_dir) / "baseline"
        app_dir.mkdir()
        (app_dir / "baseline_app.py").write_text(BASELINE_APP)
        baseline = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "baseline_app:app", "--port", str(args.baseline_port), "--loop", "uvloop",
             "--http", "httptools", "--no-access-log", "--log-level", "warning"],
            cwd=app_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            endpoint = f"http://127.0.0.1:{fport}"
            cold_names = [f"cold{i}" for i in range(args.cold)]
            create_functions(endpoint, ["hello", *cold_names])
            cold = []
            for name in cold_names:
                timings = await sequential(fport, f"/2015-03-31/functions/{name}/invocations", 1)
                cold.append(timings[0])
            results["cold_start"] = summary(cold)
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
            results["throughput"] = []
            for concurrency in args.concurrency:
                fire = await throughput(fport, invoke_path, args.requests, concurrency)
                base = await throughput(args.baseline_port, "/", args.requests, concurrency)
                results["throughput"].append({"firebox": fire, "baseline": base, "ratio": fire["per_s"] / base["per_s"]})
        finally:
            firebox.terminate()
            baseline.terminate()
            firebox.wait(timeout=30)
            baseline.wait(timeout=30)
    return results


def report(results: dict[str, Any]) -> None:
    cold, warm, base = results["cold_start"], results["warm"], results["baseline_warm"]
    print(f"\nFirebox invoke benchmark ({results['machine']['cpus']} cpus, Python {results['machine']['python']})")
    print(f"{'measure':<44}{'p50':>10}{'p99':>10}")
    print(f"{'cold start, python hello (client-observed)':<44}{cold['p50_ms']:>8.2f}ms{cold['p99_ms']:>8.2f}ms")
    print(f"{'warm invoke, sequential':<44}{warm['p50_ms']:>8.2f}ms{warm['p99_ms']:>8.2f}ms")
    print(f"{'raw HTTP hello (baseline), sequential':<44}{base['p50_ms']:>8.2f}ms{base['p99_ms']:>8.2f}ms")
    print(f"{'warm latency ratio (firebox / baseline)':<44}{warm['p50_ms'] / base['p50_ms']:>9.1f}x"
          f"{warm['p99_ms'] / base['p99_ms']:>9.1f}x")
    print(f"\n{'concurrency':<12}{'firebox/s':>12}{'baseline/s':>12}{'ratio':>8}{'fb p50':>10}{'fb p99':>10}")
    for row in results["throughput"]:
        f, b = row["firebox"], row["baseline"]
        print(f"{f['concurrency']:<12}{f['per_s']:>12.0f}{b['per_s']:>12.0f}{row['ratio']:>8.2f}"
              f"{f['p50_ms']:>8.2f}ms{f['p99_ms']:>8.2f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=20)
    parser.add_argument("--warm", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
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
