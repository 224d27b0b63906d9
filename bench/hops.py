"""The warm synchronous invoke path, hop by hop: where a warm invocation's time goes inside the
server, and how much is outside it (the client and the kernel), alone and under load.

    .venv/bin/python bench/hops.py [--invokes 2000] [--clients 1,16] [--out FILE]

It starts a real Firebox server with `FIREBOX_TRACE_HOPS=1` (see src/firebox/hops.py: each
layer marks when its part of a request ends), creates the Python hello of bench/invoke.py, warms
it up, then, for each count of `--clients`, sends `--invokes` invocations from that many clients
at once (1: sequential, on one keep-alive connection; more: each on its own, as
bench/invoke.py's throughput rows) and reads the per-hop timings of exactly those from
`GET /_firebox/hops?after=N`. Prints a table per count (p50, p99 and mean per hop, in
microseconds) and writes JSON to bench/results/ (or `--out`): the first count's at the top
level, the others under `by_clients`.

"outside the server" is the client-observed p50 minus the server's own p50 (first byte received
to response written): the client's work, the two loopback hops and the wake-ups around them.
With several clients two hops also hold waits: `parsed` the request's wait for the event loop,
busy with the others, and `answered` the runtime's wait for a CPU and then the response's for
the loop to read it (on 2 cores the loop keeps one nearly busy, and the runtimes, the client and
the rest share what is left): at 16 clients those two are most of a request's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from typing import Any

from common import out_argument, percentile, publish, run_loop, start_firebox, stop_firebox
from invoke import concurrently, create_functions, sequential

HOPS = (
    ("parsed", "HTTP request parsed, answering task started (edge)"),
    ("routed", "operation routed, input parsed and validated (frontend)"),
    ("resolved", "function and version resolved (invoker, registry cache)"),
    ("counted", "concurrency slot taken (counter)"),
    ("leased", "warm sandbox leased (workers)"),
    ("delivered", "event written to the runtime's pending GET (Runtime API)"),
    ("answered", "runtime + handler, until its response is read (sandbox)"),
    ("recorded", "END, REPORT, log tail, sandbox ready again (sandbox)"),
    ("released", "lease and slot given back (workers, counter)"),
    ("rendered", "HTTP response built (frontend)"),
    ("written", "response written to the socket (edge)"),
)


def hops(endpoint: str, after: int | None = None) -> dict[str, Any]:
    query = "" if after is None else f"?after={after}"
    with urllib.request.urlopen(f"{endpoint}/_firebox/hops{query}", timeout=30) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


async def measure(port: int, endpoint: str, path: str, clients: int, invokes: int) -> dict[str, Any]:
    """Trace `invokes` warm invocations from `clients` clients at once."""
    if clients > 1:
        await concurrently(port, path, 4 * clients, clients)  # a warm sandbox per client
    last = hops(endpoint)["last"]
    if clients == 1:
        started = time.perf_counter()
        client = await sequential(port, path, invokes)
        elapsed = time.perf_counter() - started
    else:
        client, elapsed = await concurrently(port, path, invokes, clients)
    traced = hops(endpoint, after=last)
    client_us = [ms * 1000 for ms in client]
    client_stats = {"p50_us": statistics.median(client_us), "p99_us": percentile(client_us, 99),
                    "mean_us": statistics.fmean(client_us)}
    return {"clients": clients, "per_s": invokes / elapsed, "traces": traced["traces"], "hops": traced["hops"],
            "server": traced.get("server"), "client": client_stats,
            "outside_p50_us": client_stats["p50_us"] - (traced.get("server") or {}).get("p50_us", 0.0)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    env["FIREBOX_TRACE_HOPS"] = "1"
    path = "/2015-03-31/functions/hello/invocations"
    with tempfile.TemporaryDirectory(prefix="firebox-bench-hops-") as data_dir:
        firebox, port = start_firebox(data_dir, env)
        try:
            endpoint = f"http://127.0.0.1:{port}"
            create_functions(endpoint, ["hello"])
            await sequential(port, path, 200)  # the cold start and a warm-up, left out below
            rows = [await measure(port, endpoint, path, clients, args.invokes) for clients in args.clients]
        finally:
            stop_firebox(firebox)
    first = rows[0]
    return {"benchmark": "hops",
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_average": os.getloadavg()},
            "settings": {"invokes": args.invokes, "clients": args.clients}, **first,
            "by_clients": {str(row["clients"]): row for row in rows[1:]}}


def report(results: dict[str, Any]) -> None:
    for row in [results, *results.get("by_clients", {}).values()]:
        report_one(row)


def report_one(results: dict[str, Any]) -> None:
    server, client, clients = results["server"], results["client"], results.get("clients", 1)
    how = "sequential invocations (one keep-alive connection)" if clients == 1 else (
        f"invocations from {clients} clients at once ({results['per_s']:.0f}/s; parsed and answered hold "
        f"the waits for the event loop and for a CPU)")
    print(f"warm invoke path, hop by hop: {results['traces']} {how} of a Python hello, microseconds")
    print(f"{'hop (ends when)':68s} {'p50':>7s} {'p99':>7s} {'mean':>7s} {'share':>6s}")
    for name, label in HOPS:
        row = results["hops"].get(name)
        if row is None:
            continue
        share = row["mean_us"] / server["mean_us"] if server else 0.0
        print(f"{name + ': ' + label:68s} {row['p50_us']:7.0f} {row['p99_us']:7.0f} {row['mean_us']:7.0f} {share:6.0%}")
    if server:
        overhead = server["mean_us"] - results["hops"]["answered"]["mean_us"]
        print(f"{'inside the server (first byte received -> response written)':68s} {server['p50_us']:7.0f} "
              f"{server['p99_us']:7.0f} {server['mean_us']:7.0f}")
        print(f"{'  of which the platform (all but runtime + handler), mean':68s} {'':7s} {'':7s} {overhead:7.0f}")
    print(f"{'client-observed':68s} {client['p50_us']:7.0f} {client['p99_us']:7.0f} {client['mean_us']:7.0f}")
    print(f"{'outside the server (client p50 minus server p50)':68s} {results['outside_p50_us']:7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invokes", type=int, default=2000)
    parser.add_argument("--clients", type=lambda text: [int(n) for n in text.split(",")], default=[1, 16],
                        help="client counts, comma-separated (default 1,16)")
    out_argument(parser, "hops")
    args = parser.parse_args()
    results = run_loop(run(args))
    publish(results, args.out, "hops", report)


if __name__ == "__main__":
    main()
