"""PNG plots of the benchmarks' JSON, with matplotlib's Agg backend (no display needed).

    .venv/bin/python bench/plots.py FILE.json [FILE.json ...] [--out-dir DIR]

A FILE is what `make bench` writes (bench/results/<time>/bench.json: every benchmark) or what one
benchmark writes (bench/invoke.py, async_invoke.py, keepalive.py, logs.py; older files too: a
figure they lack is left out). The plots come from the JSON alone, so any run can be re-plotted.
They are written beside each FILE (or in --out-dir): for bench.json as `<plot>.png`, for a single
benchmark's file as `<its name>-<plot>.png`.

    invoke-latency     warm invoke latency, Firebox vs the raw uvicorn hello (histogram), and the
                       latency CDF at each number of concurrent clients (the tail on a logit scale)
    invoke-throughput  requests/s against concurrent clients, Firebox vs baseline; the ratio; p50
                       and p99 against clients, with the goal (16 clients, p99 <= 10 ms)
    invoke-cold-start  per kind (Python, Node.js, boto3): the cold start's parts stacked (medians),
                       client p50 / p99, and the same handler run as a bare process
    invoke-scale-out   simultaneous first invocations: answered, and sandboxes created, over time;
                       the density figures
    async_invoke       Event invoke: durable enqueue latency CDFs; accepted and executed events/s;
                       202 -> execution latency
    keepalive          cold-start rate against idle sandbox-hours: the fixed timers' curve and the
                       hybrid policies
    logs               log query latency p50 / p99, capture rate
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

GOAL_CLIENTS, GOAL_P99_MS = 16, 10.0
FIREBOX, BASELINE = "tab:red", "tab:blue"
PARTS = (("hops", "request hops", "tab:gray"), ("placement", "placement, lease, code cache, stem cell", "tab:purple"),
         ("spawn", "sandbox spawn", "tab:orange"), ("runtime_init", "runtime init", "tab:green"),
         ("handler", "handler", "tab:blue"))


def available() -> bool:
    """True when matplotlib can be imported (the `bench` extra: `make bench` installs it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _curve(values: list[float] | None, cdf: list[list[float]] | None, stats: dict[str, float] | None
           ) -> tuple[list[float], list[float]]:
    """(latencies, cumulative fractions strictly inside (0, 1)) from raw samples, a stored CDF, or
    at least a summary's percentiles: what a logit-scaled CDF can draw."""
    if values:
        ordered = sorted(values)
        return ordered, [(i + 0.5) / len(ordered) for i in range(len(ordered))]
    if cdf:
        points = [(v, p / 100) for p, v in cdf if 0 < p < 100]
    elif stats:
        points = [(stats[f"p{p}_ms"], p / 100) for p in (50, 90, 99) if f"p{p}_ms" in stats]
    else:
        points = []
    return [x for x, _ in points], [y for _, y in points]


def _log_ms(ax: Any) -> None:
    """A log-scaled latency x axis labelled in plain numbers (0.2, 1, 10), not 2x10^-1."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency (ms, log scale)")


def _cdf_axes(ax: Any, title: str) -> None:
    """A CDF with its tail stretched (logit scale), the y ticks named as percentiles."""
    _log_ms(ax)
    ax.set_yscale("logit")
    ax.set_ylim(0.01, 0.999)
    ticks = [0.01, 0.1, 0.5, 0.9, 0.99, 0.999]
    ax.set_yticks(ticks, [f"p{100 * y:g}" for y in ticks])
    ax.yaxis.set_minor_formatter(_pyplot().NullFormatter())
    ax.set_ylabel("percentile")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


# -- bench/invoke.py ------------------------------------------------------------------------------

def invoke_latency(r: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    import numpy as np

    fig, (hist, cdfs) = plt.subplots(1, 2, figsize=(13, 4.8))
    samples = r.get("samples", {})
    warm, base = samples.get("warm"), samples.get("baseline_warm")
    if warm and base:
        low, high = min(min(warm), min(base)), max(max(warm), max(base))
        bins = np.geomspace(low * 0.9, high * 1.1, 60)
        hist.hist(base, bins=bins, alpha=0.6, color=BASELINE, label=f"raw uvicorn hello (p50 {r['baseline_warm']['p50_ms']:.2f} ms)")
        hist.hist(warm, bins=bins, alpha=0.6, color=FIREBOX, label=f"Firebox invoke (p50 {r['warm']['p50_ms']:.2f} ms)")
        _log_ms(hist)
        hist.set_ylabel("requests")
        hist.set_title(f"warm invoke, sequential, one connection ({len(warm)} requests each)")
        hist.legend()
        hist.grid(True, which="both", alpha=0.3)
    else:  # an older file: only the summaries
        for name, stats, color in (("Firebox invoke", r["warm"], FIREBOX), ("raw uvicorn hello", r["baseline_warm"], BASELINE)):
            xs, ys = _curve(None, None, stats)
            hist.plot(xs, ys, "o-", color=color, label=name)
        _cdf_axes(hist, "warm invoke, sequential (p50 / p90 / p99 only)")
        hist.legend()
    cmap = plt.get_cmap("viridis")
    levels = r.get("throughput", [])
    for i, item in enumerate(levels):
        color = cmap(i / max(1, len(levels) - 1))
        n = item["firebox"]["concurrency"]
        for side, style, label in (("firebox", "-", f"{n} client{'s' * (n > 1)}"), ("baseline", ":", None)):
            xs, ys = _curve(None, item[side].get("cdf"), item[side])
            cdfs.plot(xs, ys, style, color=color, label=label)
    cdfs.axvline(GOAL_P99_MS, color="black", lw=0.8, ls="--")
    cdfs.axhline(0.99, color="black", lw=0.8, ls="--")
    cdfs.annotate(f"goal: p99 <= {GOAL_P99_MS:g} ms at {GOAL_CLIENTS} clients", (GOAL_P99_MS, 0.99),
                  textcoords="offset points", xytext=(4, -14), fontsize=8)
    _cdf_axes(cdfs, "latency under load (solid: Firebox, dotted: raw uvicorn)")
    cdfs.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def invoke_throughput(r: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    levels = r["throughput"]
    clients = [t["firebox"]["concurrency"] for t in levels]
    fig, (rate, ratio, lat) = plt.subplots(1, 3, figsize=(15, 4.5))
    rate.plot(clients, [t["firebox"]["per_s"] for t in levels], "o-", color=FIREBOX, label="Firebox invoke")
    rate.plot(clients, [t["baseline"]["per_s"] for t in levels], "s-", color=BASELINE, label="raw uvicorn hello")
    rate.set_yscale("log")
    rate.set_ylabel("requests / s (log scale)")
    rate.set_title("throughput")
    ratio.plot(clients, [t["ratio"] for t in levels], "o-", color="black")
    for x, t in zip(clients, levels, strict=True):
        ratio.annotate(f"{t['ratio']:.3f}", (x, t["ratio"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ratio.set_ylim(bottom=0)
    ratio.set_ylabel("Firebox / baseline")
    ratio.set_title("throughput ratio (the figure)")
    for side, color, name in (("firebox", FIREBOX, "Firebox"), ("baseline", BASELINE, "uvicorn")):
        lat.plot(clients, [t[side]["p50_ms"] for t in levels], "o--", color=color, label=f"{name} p50")
        lat.plot(clients, [t[side]["p99_ms"] for t in levels], "o-", color=color, label=f"{name} p99")
    lat.axhline(GOAL_P99_MS, color="black", lw=0.8, ls="--")
    lat.plot([GOAL_CLIENTS], [GOAL_P99_MS], "k*", markersize=12, label=f"goal: p99 <= {GOAL_P99_MS:g} ms at {GOAL_CLIENTS}")
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms, log scale)")
    lat.set_title("latency against concurrency")
    for ax in (rate, ratio, lat):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("concurrent clients (keep-alive connections)")
        ax.grid(True, which="both", alpha=0.3)
    rate.legend()
    lat.legend(fontsize=8)
    return _save(fig, path)


def invoke_cold_start(r: dict[str, Any], path: Path) -> Path | None:
    kinds = list(r["cold_start"])
    if not kinds:  # a run with --cold 0
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 5), squeeze=False)
    bare = r.get("cold_baseline") or {}
    for ax, kind in zip(axes[0], kinds, strict=True):
        cold = r["cold_start"][kind]
        if "breakdown" in cold:
            parts = [(label, max(0.0, cold["breakdown"][key]["p50_ms"]), color) for key, label, color in PARTS]
        else:  # an older file: two parts
            parts = [("platform (code cache, sandbox, hops)", cold["platform_and_spawn"]["p50_ms"], "tab:gray"),
                     ("runtime init", cold["init"]["p50_ms"], "tab:green")]
        bottom = 0.0
        for label, value, color in parts:
            ax.bar(0, value, bottom=bottom, color=color, label=label, width=0.6)
            bottom += value
        client = cold["client"]
        ax.plot([0], [client["p50_ms"]], "kD", label="client-observed p50")
        ax.plot([0], [client["p99_ms"]], "kv", label="client-observed p99")
        ticks, names = [0], ["Firebox"]
        if bare.get(kind):
            ax.bar(1, bare[kind]["p50_ms"], color="lightsteelblue", hatch="//", width=0.6, label="bare process p50")
            ax.plot([1], [bare[kind]["p99_ms"]], "v", color="steelblue", label="bare process p99")
            ticks.append(1)
            names.append("bare process")
            ratio = client["p50_ms"] / bare[kind]["p50_ms"]
            ax.set_title(f"{kind} hello: {client['p50_ms']:.1f} ms p50\n{ratio:.2f}x a bare process's", fontsize=10)
        else:
            ax.set_title(f"{kind} hello: {client['p50_ms']:.1f} ms p50", fontsize=10)
        if "stem_cells_taken" in cold:
            ax.annotate(f"stem cells taken: {cold['stem_cells_taken']}/{client['n']}", (0.02, 0.97),
                        xycoords="axes fraction", va="top", fontsize=8)
        ax.set_xticks(ticks, names)
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylabel("ms")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("cold start, client-observed: the parts' medians stacked (so their sum is near, not at, the p50)")
    return _save(fig, path)


def invoke_scale_out(r: dict[str, Any], path: Path) -> Path | None:
    so = r.get("scale_out")
    if not so or "answered_at_s" not in so:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    answered = so["answered_at_s"]
    ax.step([0, *answered], range(len(answered) + 1), where="post", color=FIREBOX, label="invocations answered")
    if polled := so.get("created_at"):
        times = [0] + [point[0] for point in polled]
        ax.step(times, [0] + [point[1] for point in polled], where="post", color="tab:orange",
                label="sandboxes created: initialised (server's count, polled every 50 ms)")
        if len(polled[0]) > 2:
            ax.step(times, [0] + [point[2] for point in polled], where="post", color="tab:green",
                    label="sandboxes being started")
    ax.axvline(so["handler_s"], color="gray", lw=0.8, ls=":", label=f"handler time ({so['handler_s']:g} s)")
    ax.set_xlabel("seconds since the simultaneous first invocations")
    ax.set_ylabel("count")
    ax.yaxis.get_major_locator().set_params(integer=True)
    title = f"scale-out: {so['invocations']} simultaneous first invocations, all answered in {so['all_answered_s']:.2f} s"
    if "created_per_s" in so:
        title += f"\n{so['created_per_s']:.0f} sandboxes created/s"
    if dn := r.get("density"):
        title += (f"; density: {dn['pss_per_sandbox_mb']:.1f} MB PSS per idle sandbox, "
                  f"{dn['per_gb']:.0f} per GB")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left")
    return _save(fig, path)


# -- bench/async_invoke.py -----------------------------------------------------------------------

def async_invoke(r: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, (lat, rate, e2e) = plt.subplots(1, 3, figsize=(16, 4.6))
    idle = r.get("no_dispatch", {})
    idle_rows = {row["concurrency"]: row for row in idle.get("throughput", [])}
    pairs = [("sequential", r["enqueue_sequential"], idle.get("enqueue_sequential"))]
    pairs += [(f"{row['concurrency']} connections", row, idle_rows.get(row["concurrency"])) for row in r["throughput"]]
    for i, (label, running, alone) in enumerate(pairs):
        for stats, style, suffix in ((running, "-", ""), (alone, ":", ", dispatch off")):
            if stats:
                xs, ys = _curve(stats.get("samples"), stats.get("cdf"), stats)
                lat.plot(xs, ys, style, color=f"C{i}", label=label + suffix)
    _cdf_axes(lat, "durable enqueue: Event invoke -> 202 (after fsync)")
    lat.legend(fontsize=8)
    conns = [row["concurrency"] for row in r["throughput"]]
    xs = range(len(conns))
    rate.bar([x - 0.27 for x in xs], [row["accepted_per_s"] for row in r["throughput"]], 0.27, label="accepted/s")
    rate.bar(list(xs), [row.get("executed_per_s") or 0 for row in r["throughput"]], 0.27, label="executed/s")
    if idle.get("throughput"):
        rate.bar([x + 0.27 for x in xs], [row["accepted_per_s"] for row in idle["throughput"]], 0.27,
                 label="accepted/s, dispatch off")
    rate.set_xticks(list(xs), [f"{c} connections" for c in conns])
    rate.set_ylabel("events / s")
    rate.set_title("events per second")
    rate.legend(fontsize=8)
    rate.grid(True, axis="y", alpha=0.3)
    names = [("e2e_paced", "paced"), ("e2e_burst", "burst")]
    for offset, (p, color) in zip((-0.27, 0, 0.27), (("p50", "tab:green"), ("p90", "tab:olive"), ("p99", "tab:red")), strict=True):
        e2e.bar([i + offset for i in range(len(names))], [r[key][f"{p}_ms"] for key, _ in names], 0.27,
                color=color, label=p)
    e2e.set_xticks(range(len(names)), [f"{label} ({r[key]['n']} events)" for key, label in names])
    e2e.set_ylabel("ms")
    e2e.set_title("202 -> execution (the function's log line)")
    e2e.legend(fontsize=8)
    e2e.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


# -- bench/keepalive.py --------------------------------------------------------------------------

def keepalive(data: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    rows = data["results"]
    fixed = sorted((r for r in rows if r["keep_alive_min"] is not None), key=lambda r: r["idle_sandbox_hours"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, title in ((axes[0], "cold_pct", "cold starts, % of invocations"),
                              (axes[1], "mean_function_cold_pct", "cold starts, mean over functions (%)")):
        ax.plot([r["idle_sandbox_hours"] for r in fixed], [r[metric] for r in fixed], "o-", label="fixed keep-alive")
        for r in fixed:
            ax.annotate(f"{r['keep_alive_min']:g} min", (r["idle_sandbox_hours"], r[metric]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        hybrids = [r for r in rows if r["keep_alive_min"] is None]
        for r, marker in zip(hybrids, ("r*", "gs", "m^", "cv"), strict=False):
            ax.plot([r["idle_sandbox_hours"]], [r[metric]], marker, markersize=11, label=r["policy"])
        ax.set_xlabel("idle sandbox-hours over the trace")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if trace := data.get("trace"):
        fig.suptitle(f"keep-alive policies on a synthetic trace: {trace['functions']} functions, {trace['hours']:g} h"
                     f" (seed {trace['seed']})")
    return _save(fig, path)


# -- bench/logs.py -------------------------------------------------------------------------------

def logs(r: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    rows = r["queries"]["queries"]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.8))
    ys = range(len(rows))
    ax.barh([y - 0.2 for y in ys], [q["p50_ms"] for q in rows], 0.4, label="p50")
    ax.barh([y + 0.2 for y in ys], [q["p99_ms"] for q in rows], 0.4, label="p99")
    ax.set_yticks(list(ys), [q["query"] for q in rows], fontsize=8)
    ax.invert_yaxis()
    _log_ms(ax)
    ax.set_xlabel("ms (boto3, HTTP included; log scale)")
    setup, cap = r["queries"]["setup"], r["capture"]
    ax.set_title(f"log queries over {setup['lines']:,} stored lines; capture: {cap['lines_per_s_median']:,.0f} lines/s",
                 fontsize=10)
    ax.legend()
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return _save(fig, path)


# -- files ---------------------------------------------------------------------------------------

# -- bench/sandboxes.py --------------------------------------------------------------------------

def sandboxes(data: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    rows = data["backends"]
    names = [r["backend"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, key, title, goal in ((axes[0], "created_per_s", "sandboxes created per second", 300),
                                 (axes[1], "cpu_ms_per_sandbox", "machine CPU per sandbox (ms)", None),
                                 (axes[2], "per_gb", "idle sandboxes per GB (PSS)", 500)):
        ax.bar(names, [r[key] for r in rows], color=["#999999", "#d62728"][: len(rows)])
        if goal is not None:
            ax.axhline(goal, linestyle="--", color="k", linewidth=1, label=f"goal {goal}")
            ax.legend()
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    settings = data.get("settings", {})
    fig.suptitle(f"{settings.get('count')} idle Python sandboxes, {settings.get('concurrency')} starts in flight")
    return _save(fig, path)


# -- bench/hops.py -------------------------------------------------------------------------------

def hops(data: dict[str, Any], path: Path) -> Path:
    """One bar per hop (mean and p99, microseconds), the sandbox's own part apart in colour."""
    plt = _pyplot()
    names = list(data["hops"])
    means = [data["hops"][n]["mean_us"] for n in names]
    p99s = [data["hops"][n]["p99_us"] for n in names]
    colours = ["#d62728" if n == "answered" else "#1f77b4" for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.barh(names, p99s, color="#dddddd", label="p99")
    ax.barh(names, means, color=colours, label="mean (red: runtime + handler, in the sandbox)")
    ax.invert_yaxis()
    ax.set_xlabel("microseconds")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    client, outside = data["client"], data["outside_p50_us"]
    ax.set_title(f"warm invoke, hop by hop ({data['traces']} invocations): client p50 {client['p50_us']:.0f} us, "
                 f"{outside:.0f} us of it outside the server")
    return _save(fig, path)


PLOTS: dict[str, list[tuple[str, Callable[[dict[str, Any], Path], Path | None]]]] = {
    "invoke": [("latency", invoke_latency), ("throughput", invoke_throughput),
               ("cold-start", invoke_cold_start), ("scale-out", invoke_scale_out)],
    "hops": [("", hops)],
    "runtime_ceiling": [],  # a table only
    "warm_memory": [],  # a table only
    "cpu": [],  # a table only
    "async_invoke": [("", async_invoke)],
    "keepalive": [("", keepalive)],
    "logs": [("", logs)],
    "sandboxes": [("", sandboxes)],
}


def kind_of(data: dict[str, Any]) -> str | None:
    """Which benchmark wrote `data` (older files carry no "benchmark" key: guessed from theirs)."""
    if data.get("benchmark") in PLOTS or data.get("benchmark") == "all":
        return data["benchmark"]
    for key, kind in (("benchmarks", "all"), ("cold_start", "invoke"), ("enqueue_sequential", "async_invoke"),
                      ("position", "keepalive"), ("capture", "logs")):
        if key in data:
            return kind
    return None


def plot_results(kind: str, results: dict[str, Any], out_dir: Path, prefix: str) -> list[Path]:
    """Every plot of one benchmark's results, as out_dir/<prefix><plot>.png."""
    written = []
    for name, draw in PLOTS[kind]:
        stem = f"{prefix}-{name}" if prefix and name else (prefix or name or kind)
        if (png := draw(results, out_dir / f"{stem}.png")) is not None:
            written.append(png)
    return written


def plot_file(path: Path, out_dir: Path | None = None) -> list[Path]:
    """The plots of one JSON file (a `make bench` run or one benchmark's), beside it by default."""
    data = json.loads(Path(path).read_text())
    out_dir = Path(out_dir or Path(path).parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = kind_of(data)
    if kind is None:
        raise SystemExit(f"{path}: not a benchmark result this script knows")
    if kind != "all":
        return plot_results(kind, data, out_dir, Path(path).stem)
    written = []
    for name, entry in data["benchmarks"].items():
        if entry.get("results") is not None:
            written += plot_results(kind_of(entry["results"]) or name, entry["results"], out_dir,
                                    "" if name != "invoke" else "invoke")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="JSON results")
    parser.add_argument("--out-dir", type=Path, help="where the PNGs go (default: beside each file)")
    args = parser.parse_args()
    if not available():
        raise SystemExit("matplotlib is not installed: `make bench` installs it (the bench extra), or "
                         ".venv/bin/pip install -e '.[bench]'")
    for file in args.files:
        for png in plot_file(file, args.out_dir):
            print(png)


if __name__ == "__main__":
    sys.exit(main())
