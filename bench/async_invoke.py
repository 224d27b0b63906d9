"""Asynchronous invoke benchmark: durable enqueue latency, accepted events per second, and
end-to-end latency from acceptance (the 202) to execution (the function's log line).

    .venv/bin/python bench/async_invoke.py [--sequential 1000] [--requests 3000]
                                           [--concurrency 16,64] [--e2e 200] [--out FILE]

It starts a real Firebox server (isolated sandboxes, fresh data dir, default async settings: 32
events in flight overall, 8 per function), creates a fast Python function that prints
`RAN <request id>`, and drives Event invokes with the minimal keep-alive HTTP/1.1 client of
bench/common.py (an asyncio Protocol on uvloop). Every 202 follows an fsync'd commit (group
commit), so "accepted" means durably stored. Accepted events are dispatched and run while the
next ones arrive, as in production; each phase waits for the queue to drain before the next
starts, and the drain rate is reported too. End-to-end latency: the function's RAN log record
timestamp (taken by the server when it reads the line) minus the client's clock at the 202 (same
host). Prints a table and writes JSON to bench/results/ (or `--out`); `bench/plots.py` draws it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import zipfile
from typing import Any

from common import (
    Connection,
    cdf,
    out_argument,
    percentile,
    publish,
    run_loop,
    samples,
    start_firebox,
    stop_firebox,
    summary,
)

SOURCE = "def handler(event, context):\n    print('RAN', context.aws_request_id, flush=True)\n    return None\n"
NAME = "fast"
PATH = f"/2015-03-31/functions/{NAME}/invocations"


EVENT_HEADERS = {"X-Amz-Invocation-Type": "Event"}


async def send_event(conn: Connection, index: int) -> tuple[str, float, int]:
    """One Event invoke: (request id, client ms at the 202, latency ms)."""
    start = time.perf_counter()
    status, headers, body = await conn.exchange(PATH, b'{"i":%d}' % index, EVENT_HEADERS)
    latency = (time.perf_counter() - start) * 1000
    if status != 202:
        raise SystemExit(f"expected 202, got {status}: {body[:300]!r}")
    return headers["x-amzn-requestid"], time.time() * 1000, latency


async def sequential(port: int, count: int) -> tuple[list[float], dict[str, float]]:
    conn = await Connection.open("127.0.0.1", port)
    timings, accepted = [], {}
    for i in range(count):
        request_id, at_ms, latency = await send_event(conn, i)
        timings.append(latency)
        accepted[request_id] = at_ms
    await conn.close()
    return timings, accepted


async def throughput(port: int, requests: int, concurrency: int) -> dict[str, Any]:
    connections = [await Connection.open("127.0.0.1", port) for _ in range(concurrency)]
    remaining = requests
    latencies: list[float] = []
    accepted: dict[str, float] = {}

    async def drive(conn: Connection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            request_id, at_ms, latency = await send_event(conn, remaining)
            latencies.append(latency)
            accepted[request_id] = at_ms

    start = time.perf_counter()
    await asyncio.gather(*(drive(c) for c in connections))
    elapsed = time.perf_counter() - start
    for conn in connections:
        await conn.close()
    return {"concurrency": concurrency, "requests": requests, "accepted": len(accepted),
            "accepted_per_s": len(accepted) / elapsed, "p50_ms": statistics.median(latencies),
            "p99_ms": percentile(latencies, 99), "cdf": cdf(latencies), "_accepted": accepted}


def stats(endpoint: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{endpoint}/_firebox/events", timeout=30) as answer:
        return json.loads(answer.read()).get(NAME, {"queued": 0, "in_flight": 0, "retrying": 0, "succeeded": 0,
                                                     "failed": 0})


def wait_drained(endpoint: str, succeeded: int, deadline_s: float = 300) -> float:
    """Wait until `succeeded` events have run; returns when (perf_counter)."""
    end = time.monotonic() + deadline_s
    while True:
        now = stats(endpoint)
        if now["succeeded"] >= succeeded:
            return time.perf_counter()
        if time.monotonic() > end:
            raise SystemExit(f"queue did not drain in {deadline_s} s: {now}")
        time.sleep(0.25)  # the statistics scan the queue: poll gently, not to slow the dispatcher


def ran_timestamps(logs: Any, since_ms: float) -> dict[str, int]:
    """request id -> timestamp of its (first) RAN record at or after `since_ms`."""
    found: dict[str, int] = {}
    kwargs: dict[str, Any] = {"logGroupName": f"/aws/lambda/{NAME}", "startTime": int(since_ms)}
    while True:
        page = logs.filter_log_events(**kwargs)
        for event in page["events"]:
            for line in event["message"].splitlines():
                if line.startswith("RAN "):
                    found.setdefault(line.split()[1], event["timestamp"])
        if not page.get("nextToken") or not page["events"]:
            return found
        kwargs["nextToken"] = page["nextToken"]


def end_to_end(logs: Any, accepted: dict[str, float], deadline_s: float = 120) -> list[float]:
    end = time.monotonic() + deadline_s
    since = min(accepted.values()) - 5000
    while True:
        time.sleep(0.25)  # reading the log costs the server: poll gently while events run
        ran = ran_timestamps(logs, since)
        if set(accepted) <= set(ran):
            return [ran[r] - at for r, at in accepted.items()]
        if time.monotonic() > end:
            raise SystemExit(f"{len(set(accepted) - set(ran))} events have no RAN line after {deadline_s} s")


def clients(endpoint: str) -> tuple[Any, Any]:
    import boto3
    import botocore.config

    common = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "bench",
              "aws_secret_access_key": "bench", "config": botocore.config.Config(retries={"max_attempts": 1})}
    return boto3.client("lambda", **common), boto3.client("logs", **common)


def create_function(lam: Any) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", SOURCE)
    lam.create_function(FunctionName=NAME, Runtime="python3.11", Role="arn:aws:iam::000000000000:role/bench",
                        Handler="app.handler", Code={"ZipFile": buffer.getvalue()})
    deadline = time.monotonic() + 60
    while lam.get_function_configuration(FunctionName=NAME)["State"] != "Active":
        if time.monotonic() > deadline:
            raise SystemExit(f"{NAME} did not become Active")
        time.sleep(0.02)


async def enqueue_only(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The same enqueue measurements with dispatching switched off (FIREBOX_ASYNC_CONCURRENCY=0:
    no event is ever claimed), so the store's thread does nothing but accept: the capacity of
    the frontend and the group commit alone."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="firebox-async-bench-") as data_dir:
        firebox, port = start_firebox(data_dir, {**env, "FIREBOX_ASYNC_CONCURRENCY": "0"})
        try:
            lam, _ = clients(f"http://127.0.0.1:{port}")
            create_function(lam)
            await sequential(port, 20)
            timings, _ = await sequential(port, args.sequential)
            out["enqueue_sequential"] = {**summary(timings), "samples": samples(timings)}
            out["throughput"] = []
            for concurrency in args.concurrency:
                row = await throughput(port, args.requests, concurrency)
                row.pop("_accepted")
                out["throughput"].append(row)
        finally:
            stop_firebox(firebox)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    results: dict[str, Any] = {"benchmark": "async_invoke",
                               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "load_average": os.getloadavg()},
                               "settings": {"async_concurrency": 32, "async_per_function": 8,
                                            **{k: v for k, v in vars(args).items() if k != "out"}}}
    results["no_dispatch"] = await enqueue_only(args, env)
    with tempfile.TemporaryDirectory(prefix="firebox-async-bench-") as data_dir:
        firebox, port = start_firebox(data_dir, env)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            lam, logs = clients(endpoint)
            create_function(lam)
            done = 0

            # Warm up: a few events, so that a sandbox exists and the code paths are hot.
            _, warm = await sequential(port, 20)
            done += len(warm)
            wait_drained(endpoint, done)

            # (a) durable enqueue latency, sequential, one keep-alive connection.
            timings, accepted = await sequential(port, args.sequential)
            results["enqueue_sequential"] = {**summary(timings), "samples": samples(timings)}
            t0 = time.perf_counter()
            done += len(accepted)
            results["enqueue_sequential"]["drain_s_after_last_202"] = wait_drained(endpoint, done) - t0

            # (b) accepted events per second under concurrency; then how fast the backlog runs.
            results["throughput"] = []
            for concurrency in args.concurrency:
                row = await throughput(port, args.requests, concurrency)
                accepted = row.pop("_accepted")
                t0 = time.perf_counter()
                before = done
                done += len(accepted)
                drained_at = wait_drained(endpoint, done)
                first_ran, last_ran = None, None
                ran = ran_timestamps(logs, min(accepted.values()) - 5000)
                stamps = [ran[r] for r in accepted if r in ran]
                if stamps:
                    first_ran, last_ran = min(stamps), max(stamps)
                row["drain_s_after_last_202"] = drained_at - t0
                row["executed_per_s"] = (len(stamps) / ((last_ran - first_ran) / 1000)
                                         if first_ran is not None and last_ran != first_ran else None)
                row["executed_before"] = before
                results["throughput"].append(row)

            # (c) end-to-end latency: paced (one at a time, queue empty) and burst (all at once).
            _, paced = await sequential(port, args.e2e)
            done += len(paced)
            results["e2e_paced"] = summary(end_to_end(logs, paced))
            wait_drained(endpoint, done)
            burst = await throughput(port, args.e2e, 64)
            accepted = burst.pop("_accepted")
            done += len(accepted)
            results["e2e_burst"] = summary(end_to_end(logs, accepted))
            wait_drained(endpoint, done)
            final = stats(endpoint)
            results["final_counts"] = final
            if final["failed"]:
                raise SystemExit(f"events failed: {final}")
        finally:
            stop_firebox(firebox)
    return results


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"\nFirebox asynchronous invoke benchmark ({m['cpus']} cpus, Python {m['python']}; "
          f"32 in flight overall, 8 per function)")
    print(f"{'measure':<58}{'p50':>10}{'p90':>10}{'p99':>10}")
    seq = results["enqueue_sequential"]
    print(f"{'durable enqueue (Event invoke -> 202), sequential':<58}{seq['p50_ms']:>8.2f}ms"
          f"{seq['p90_ms']:>8.2f}ms{seq['p99_ms']:>8.2f}ms")
    for key, label in (("e2e_paced", "202 -> execution, paced (one at a time)"),
                       ("e2e_burst", f"202 -> execution, burst ({results['e2e_burst']['n']} over 64 connections)")):
        row = results[key]
        print(f"{label:<58}{row['p50_ms']:>8.0f}ms{row['p90_ms']:>8.0f}ms{row['p99_ms']:>8.0f}ms")
    print(f"\n{'connections':<13}{'requests':>9}{'accepted/s':>12}{'202 p50':>10}{'202 p99':>10}"
          f"{'executed/s':>12}{'drain after last 202':>22}")
    for row in results["throughput"]:
        executed = f"{row['executed_per_s']:.0f}" if row["executed_per_s"] else "-"
        print(f"{row['concurrency']:<13}{row['requests']:>9}{row['accepted_per_s']:>12.0f}{row['p50_ms']:>8.2f}ms"
              f"{row['p99_ms']:>8.2f}ms{executed:>12}{row['drain_s_after_last_202']:>20.1f} s")
    idle = results["no_dispatch"]
    print("\nthe same with dispatching off (FIREBOX_ASYNC_CONCURRENCY=0: enqueue alone)")
    iseq = idle["enqueue_sequential"]
    print(f"{'durable enqueue, sequential':<58}{iseq['p50_ms']:>8.2f}ms{iseq['p90_ms']:>8.2f}ms{iseq['p99_ms']:>8.2f}ms")
    for row in idle["throughput"]:
        print(f"{row['concurrency']:<13}{row['requests']:>9}{row['accepted_per_s']:>12.0f}{row['p50_ms']:>8.2f}ms"
              f"{row['p99_ms']:>8.2f}ms")
    print(f"\nsequential: {seq['n']} events, {1000 / seq['mean_ms']:.0f}/s on one connection; "
          f"final counts {results['final_counts']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64])
    parser.add_argument("--e2e", type=int, default=200)
    out_argument(parser, "async-invoke")
    args = parser.parse_args()
    results = run_loop(run(args))
    publish(results, args.out, "async-invoke", report)


if __name__ == "__main__":
    main()
