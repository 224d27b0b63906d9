"""Logs benchmark: lines per second captured end to end, and query latency over a million lines.

    .venv/bin/python bench/logs.py [--lines 100000] [--runs 3] [--stored 1000000] [--queries 40] [--out FILE]

1. Capture: a real Firebox server runs a Python function that prints `--lines` lines of 100
   bytes; the figure is lines / (time from sending Invoke to the moment the invocation's REPORT
   line, written after all of them, is the newest event GetLogEvents returns for the stream),
   and every line is then checked to be stored (or counted in a drop notice). A second measure floods 1,000,000 lines in
   one invocation and reports what was kept and what was dropped (with its notice).
2. Queries: `--stored` lines (10 streams, 1% carrying ERROR, one in 10,000 carrying "needle")
   are inserted directly through the log store into a fresh data dir, then a server is started on
   it and GetLogEvents / FilterLogEvents are timed through boto3 (HTTP included), p50 and p99.

Prints a table and writes JSON to bench/results/logs-<time>.json (or `--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import out_argument, percentile, publish

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from firebox.logs import reads
from firebox.logs.store import SqliteLogStore

PRINTER = '''
import sys

def handler(event, context):
    line = "benchline " + "x" * 89 + "\\n"  # 100 bytes
    block = line * 1000
    for _ in range(event["lines"] // 1000):
        sys.stdout.write(block)
    sys.stdout.flush()
    return event["lines"]
'''
BIG_GROUP = "/bench/big"
STREAMS = 10





def summary(values_ms: list[float]) -> dict[str, float]:
    return {"n": len(values_ms), "p50_ms": statistics.median(values_ms), "p99_ms": percentile(values_ms, 99)}


# -- the server ----------------------------------------------------------------------------------


class Server:
    def __init__(self, data_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "firebox", "serve", "--port", "0", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit("firebox exited before it was ready")
            if line.startswith("Firebox ready at "):
                self.endpoint = line.split()[-1]
                return
        raise SystemExit("firebox did not become ready in 60 s")

    def client(self, service: str) -> Any:
        import boto3
        import botocore.config

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="bench",
                            aws_secret_access_key="bench",
                            config=botocore.config.Config(retries={"max_attempts": 1}, read_timeout=300))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def wait(probe: Callable[[], Any], deadline_s: float, what: str) -> Any:
    """Poll `probe` until it returns something true; a log group or stream that does not exist
    yet (its first records are still in the store's buffer) counts as not yet."""
    import botocore.exceptions

    end = time.monotonic() + deadline_s
    while True:
        try:
            found = probe()
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            found = None
        if found:
            return found
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


# -- 1. capture ----------------------------------------------------------------------------------


def capture(lines: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="firebox-bench-logs-") as data_dir:
        server = Server(Path(data_dir))
        try:
            lam, logs = server.client("lambda"), server.client("logs")
            import io
            import zipfile

            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                archive.writestr("app.py", PRINTER)
            lam.create_function(FunctionName="printer", Runtime="python3.11", Handler="app.handler",
                                Role="arn:aws:iam::000000000000:role/bench", Code={"ZipFile": buffer.getvalue()},
                                MemorySize=512, Timeout=120)
            wait(lambda: lam.get_function_configuration(FunctionName="printer")["State"] == "Active", 60, "Active")
            lam.invoke(FunctionName="printer", Payload=b'{"lines": 1000}')  # the cold start out of the way
            # One warm sandbox, one stream: its newest event is the probe.
            stream = wait(lambda: logs.describe_log_streams(logGroupName="/aws/lambda/printer")["logStreams"], 60,
                          "the printer's stream")[0]["logStreamName"]
            wait(lambda: any(e["message"].startswith("REPORT ") for e in logs.get_log_events(
                logGroupName="/aws/lambda/printer", logStreamName=stream, limit=1)["events"]), 60, "the warm-up")
            measured = [one_capture(lam, logs, Path(data_dir), stream, lines) for _ in range(runs)]
            flood = one_capture(lam, logs, Path(data_dir), stream, 1_000_000)
        finally:
            server.stop()
    rates = [m["lines_per_s"] for m in measured]
    return {"lines": lines, "runs": measured, "lines_per_s_median": statistics.median(rates), "flood": flood}


def stored_events(data_dir: Path, after_id: int) -> list[tuple[int, str]]:
    """(id, message) of every event stored after `after_id`, in id order (rows hold several)."""
    with sqlite3.connect(data_dir / "logs.db") as db:
        rows = db.execute("SELECT id, ts, message, event_count, layout FROM log_events "
                          "WHERE id + event_count - 1 > ? ORDER BY id", (after_id,)).fetchall()
    return [(event_id, message) for row in rows for event_id, _, message in reads.split(*row) if event_id > after_id]


def one_capture(lam: Any, logs: Any, data_dir: Path, stream: str, lines: int) -> dict[str, Any]:
    with sqlite3.connect(data_dir / "logs.db") as db:
        before = db.execute("SELECT coalesce(max(id + event_count - 1), 0) FROM log_events").fetchone()[0]
    started = time.perf_counter()
    answer = lam.invoke(FunctionName="printer", Payload=json.dumps({"lines": lines}).encode())
    invoked = time.perf_counter()
    request_id = answer["ResponseMetadata"]["RequestId"]
    assert json.loads(answer["Payload"].read()) == lines
    report = f"REPORT RequestId: {request_id}"

    def counts() -> tuple[int, int, int, int | None]:
        """(lines stored, lines dropped, drop notices, the REPORT's event id) since `before`."""
        events = stored_events(data_dir, before)
        stored = sum(message.startswith("benchline ") for _, message in events)
        notices = [message for _, message in events if message.startswith("[firebox] ")]
        found = min((event_id for event_id, message in events if message.startswith(report)), default=None)
        return stored, sum(int(n.split()[1]) for n in notices), len(notices), found

    next_check = [time.monotonic()]

    def settled() -> bool:
        newest = logs.get_log_events(logGroupName="/aws/lambda/printer", logStreamName=stream, limit=1)["events"]
        if any(e["message"].startswith(report) for e in newest):
            return True
        # Output stored AFTER the invocation's REPORT line (it should never be: reported below)
        # keeps the REPORT from being the newest event; then every line accounted for will do.
        if time.monotonic() < next_check[0]:
            return False
        next_check[0] = time.monotonic() + 0.5  # (reading every event back costs the machine)
        stored, dropped, _, found = counts()
        return found is not None and stored + dropped == lines

    wait(settled, 300, "the REPORT line")
    queryable = time.perf_counter()
    stored, dropped, notices, report_id = counts()  # after the clock: checking, not measuring
    assert stored + dropped == lines, (stored, dropped, lines)
    after_report = sum(not message.startswith("START ") for _, message in stored_events(data_dir, report_id))
    return {"lines": lines, "invoke_s": invoked - started, "queryable_s": queryable - started,
            "lines_per_s": lines / (queryable - started), "stored": stored, "dropped": dropped,
            "notices": notices, "after_report": after_report}


# -- 2. queries ----------------------------------------------------------------------------------


async def populate(data_dir: Path, total: int) -> dict[str, Any]:
    store = SqliteLogStore(data_dir / "logs.db", max_records=10**7, max_bytes=10**10)
    await store.start()
    base_ms = int(time.time() * 1000) - total  # one line per millisecond, ending now
    streams = [f"2024/01/01/[$LATEST]{uuid.uuid4().hex}" for _ in range(STREAMS)]
    started = time.perf_counter()
    per_segment = 1000
    for first in range(0, total, per_segment):
        stream = streams[(first // per_segment) % STREAMS]
        messages = []
        for n in range(first, min(first + per_segment, total)):
            level = "ERROR" if n % 100 == 0 else "INFO"
            extra = " needle" if n % 10_000 == 5_000 else ""
            messages.append(f"[{level}]\t2024-01-01T00:00:00.000Z\t{uuid.UUID(int=n)}\tmessage number {n}{extra}\n")
        store.append_lines(BIG_GROUP, stream, base_ms + first, messages)
        if first % 100_000 == 0:
            await store.flush()
    await store.flush()
    elapsed = time.perf_counter() - started
    await store.stop()
    return {"lines": total, "streams": streams, "insert_s": elapsed, "base_ms": base_ms,
            "size_mb": (data_dir / "logs.db").stat().st_size / 1e6}


def timed(call: Callable[[], Any], count: int) -> tuple[dict[str, float], Any]:
    timings, result = [], None
    for _ in range(count):
        started = time.perf_counter()
        result = call()
        timings.append((time.perf_counter() - started) * 1000)
    return summary(timings), result


def queries(total: int, count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="firebox-bench-logs-") as data_dir:
        setup = asyncio.run(populate(Path(data_dir), total))
        server = Server(Path(data_dir))
        try:
            logs = server.client("logs")
            stream = setup["streams"][3]
            base = setup["base_ms"]
            rng = random.Random(7)
            results: dict[str, Any] = {"setup": {k: v for k, v in setup.items() if k != "streams"}}
            logs.describe_log_groups()  # the first call loads botocore's model on both sides

            def get(**kwargs: Any) -> Callable[[], Any]:
                return lambda: logs.get_log_events(logGroupName=BIG_GROUP, logStreamName=stream, **kwargs)

            def filt(**kwargs: Any) -> Callable[[], Any]:
                return lambda: logs.filter_log_events(logGroupName=BIG_GROUP, **kwargs)

            cases: list[tuple[str, Callable[[], Any], int, Callable[[Any], int]]] = [
                ("GetLogEvents newest 100 (no token)", get(limit=100), count, lambda r: len(r["events"])),
                ("GetLogEvents 100 at a random time", lambda: get(
                    startFromHead=True, limit=100, startTime=base + rng.randrange(total))(), count,
                 lambda r: len(r["events"])),
                ("GetLogEvents default page (1 MB)", get(), max(5, count // 4), lambda r: len(r["events"])),
                ("FilterLogEvents last minute, 100", lambda: filt(
                    startTime=int(time.time() * 1000) - 60_000, limit=100)(), count, lambda r: len(r["events"])),
                ("FilterLogEvents term ERROR, 100", filt(filterPattern="ERROR", limit=100), count,
                 lambda r: len(r["events"])),
                ("FilterLogEvents term ERROR, 1,000", filt(filterPattern="ERROR", limit=1000), count,
                 lambda r: len(r["events"])),
                ("FilterLogEvents rare term (scans all)", filt(filterPattern="needle"), max(5, count // 4),
                 lambda r: len(r["events"])),
                ("FilterLogEvents phrase in a 10 s window", lambda: filt(
                    filterPattern='"message number"', startTime=(t := base + rng.randrange(total - 10_000)),
                    endTime=t + 10_000, limit=100)(), count, lambda r: len(r["events"])),
            ]
            results["queries"] = []
            for label, call, runs, events in cases:
                stats, last = timed(call, runs)
                results["queries"].append({"query": label, **stats, "events": events(last),
                                           "next_token": bool(last.get("nextToken"))})
        finally:
            server.stop()
    return results


def report(results: dict[str, Any]) -> None:
    machine = results["machine"]
    cap = results["capture"]
    print(f"\nFirebox logs benchmark ({machine['cpus']} cpus, Python {machine['python']}, SQLite {machine['sqlite']})")
    print(f"\ncapture, end to end (print -> queryable), {cap['lines']:,} lines of 100 bytes per invocation")
    print(f"{'run':<6}{'lines/s':>12}{'invoke':>10}{'queryable':>11}{'stored':>10}{'dropped':>10}")
    for i, run in enumerate(cap["runs"], 1):
        print(f"{i:<6}{run['lines_per_s']:>12,.0f}{run['invoke_s']:>9.2f}s{run['queryable_s']:>10.2f}s"
              f"{run['stored']:>10,}{run['dropped']:>10,}")
    late = [(what, run["after_report"]) for what, run in [*((f"run {i}", r) for i, r in enumerate(cap["runs"], 1)),
                                                          ("flood", cap["flood"])] if run.get("after_report")]
    for what, count in late:
        print(f"WARNING: {what}: {count:,} records stored after the invocation's REPORT line (its output must "
              "come before END/REPORT)")
    print(f"median {cap['lines_per_s_median']:>11,.0f} lines/s")
    flood = cap["flood"]
    print(f"flood: 1,000,000 lines (100 MB) in one invocation: invoke {flood['invoke_s']:.2f} s, queryable after "
          f"{flood['queryable_s']:.2f} s, {flood['stored']:,} stored, {flood['dropped']:,} dropped "
          f"({flood['notices']} notices)")
    q = results["queries"]
    setup = q["setup"]
    print(f"\nqueries over {setup['lines']:,} stored lines ({STREAMS} streams, {setup['size_mb']:.0f} MB; inserted "
          f"through the store in {setup['insert_s']:.1f} s = {setup['lines'] / setup['insert_s']:,.0f} lines/s)")
    print(f"{'query (boto3, HTTP included)':<42}{'p50':>10}{'p99':>10}{'events':>8}{'n':>5}")
    for row in q["queries"]:
        print(f"{row['query']:<42}{row['p50_ms']:>8.1f}ms{row['p99_ms']:>8.1f}ms{row['events']:>8}{row['n']:>5}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000, help="lines per capture run (multiple of 1000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=40, help="repetitions per query")
    out_argument(parser, "logs")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "benchmark": "logs",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version},
        "capture": capture(args.lines, args.runs),
        "queries": queries(args.stored, args.queries),
    }
    publish(results, args.out, "logs", report)


if __name__ == "__main__":
    main()
