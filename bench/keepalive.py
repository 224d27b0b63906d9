"""Keep-alive benchmark: cold-start rate against idle sandbox-time, for fixed keep-alive timers and
the hybrid histogram policy (`firebox.workers.keepalive`), on a synthetic trace.

    .venv/bin/python bench/keepalive.py [--seed 42] [--functions 200] [--hours 24]
                                        [--warmup-hours 0] [--jobs N] [--out FILE]

A discrete-event simulation, no sandboxes: each function's invocations are replayed against a
model of the worker manager's pool (one sandbox per concurrent invocation, most recently used
first, reaped at `keep_until`, unloaded after the invocation when `release_after_end`, one sandbox
pre-warmed at `prewarm_at` unless one is already idle). Functions share nothing (no memory cap),
so each is simulated alone, in time order; policies run in parallel processes (`--jobs`).

The trace (seeded, reproducible; each function has its own generators), after the shape of the
Azure Functions trace:
- rare (70%): Poisson arrivals, mean gap log-uniform in 1-12 h;
- periodic (20%): timers every 1, 5, 10, 15, 30 or 60 min, each firing 0-2 s late;
- hot (10%): Poisson, mean gap log-uniform in 0.5-30 s, rate modulated by +-60% over the day;
- execution time: per-function median log-normal around 100 ms (sigma 1, 5 ms..20 s), each
  invocation log-normal around it (sigma 0.5); memory 128-1024 MB (for the GB-hours column).
By default the policies learn from nothing during the measured day; `--warmup-hours 24` replays a
day before it first (steady state: same functions, the trace just starts earlier).

Policies: fixed keep-alive of 1, 5, 10, 20, 60 and 240 minutes (the curve); "hybrid" (the
defaults: concurrency levels, debiased CV); "hybrid 1-level" (no levels: every sandbox of a
function follows its level-1 decision, as in the paper); "hybrid (paper)" (no levels, the raw CV).

Measures per policy: cold starts (invocations that found no idle sandbox) as a share of all
invocations, of each class's, and the mean over functions of their own share (each function
weighs the same, as in the paper's per-application figures); idle sandbox-hours (time sandboxes
exist without running an invocation, pre-warmed ones included, cut at the end of the trace), the
same weighted by memory (wasted GB-hours), the mean number of idle sandboxes, and sandboxes
created (cold starts plus pre-warms). Prints a table and where each hybrid sits on the fixed
curve (interpolated), writes JSON to bench/results/keepalive-<time>.json (or `--out`) and, when
matplotlib is installed (`make bench` installs it), the curve beside it as a PNG (`bench/plots.py`).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import multiprocessing
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import plots
from common import shown, write_results

from firebox.workers.keepalive import (
    FixedKeepAlive,
    HybridHistogramPolicy,
    KeepAlivePolicy,
)

CLASSES = ("rare", "periodic", "hot")
PERIODS_MIN = (1, 5, 10, 15, 30, 60)
FIXED_MIN = (1, 5, 10, 20, 60, 240)  # 240: the paper's range, its keep-alive for unrepresentative functions
INF = math.inf


@dataclass
class Function:
    name: str
    kind: str
    memory_mb: int
    invocations: list[tuple[float, float]]  # (arrival, duration), in arrival order


# -- the trace ----------------------------------------------------------------------------------

def make_trace(n: int, hours: float, seed: int) -> list[Function]:
    """Each function draws from its own generators (parameters, arrivals, durations), so a longer
    trace extends a shorter one with the same seed instead of reshuffling it."""
    horizon = hours * 3600
    n_hot = round(n * 0.10)
    n_periodic = round(n * 0.20)
    kinds = ["hot"] * n_hot + ["periodic"] * n_periodic + ["rare"] * (n - n_hot - n_periodic)
    functions = []
    for i, kind in enumerate(kinds):
        rng, arrive, last = (random.Random(f"{seed}:{i}:{part}") for part in ("parameters", "arrivals", "durations"))
        median = min(20.0, max(0.005, rng.lognormvariate(math.log(0.1), 1.0)))
        memory = rng.choice((128, 128, 256, 512, 1024))
        if kind == "rare":
            arrivals = poisson(arrive, horizon, mean_gap=log_uniform(rng, 3600, 12 * 3600))
        elif kind == "periodic":
            period = PERIODS_MIN[i % len(PERIODS_MIN)] * 60.0
            phase = rng.uniform(0, period)
            ticks = int((horizon - phase) // period) + 1
            arrivals = [t for k in range(ticks) if (t := phase + k * period + arrive.uniform(0, 2)) < horizon]
        else:
            mean_gap, phase = log_uniform(rng, 0.5, 30), rng.uniform(0, 2 * math.pi)
            arrivals = diurnal_poisson(arrive, horizon, mean_gap, swing=0.6, phase=phase)
        durations = [min(900.0, median * last.lognormvariate(0, 0.5)) for _ in arrivals]
        functions.append(Function(f"{kind}-{i:03d}", kind, memory, list(zip(arrivals, durations))))
    return functions


def log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def poisson(rng: random.Random, horizon: float, mean_gap: float) -> list[float]:
    out, t = [], rng.expovariate(1 / mean_gap)
    while t < horizon:
        out.append(t)
        t += rng.expovariate(1 / mean_gap)
    return out


def diurnal_poisson(rng: random.Random, horizon: float, mean_gap: float, swing: float, phase: float) -> list[float]:
    """Poisson with rate (1 + swing * sin(2 pi t / 1 day + phase)) / mean_gap, by thinning."""
    base = 1 / mean_gap
    peak = base * (1 + swing)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= horizon:
            return out
        if rng.random() * (1 + swing) < 1 + swing * math.sin(2 * math.pi * t / 86400 + phase):
            out.append(t)


# -- the simulation -----------------------------------------------------------------------------

@dataclass
class Outcome:
    invocations: int = 0
    cold: int = 0
    idle_s: float = 0.0
    created: int = 0
    prewarmed: int = 0


def simulate_function(policy: KeepAlivePolicy, fn: Function, horizon: float, measure_from: float = 0.0) -> Outcome:
    """Replay one function's invocations against a pool governed by `policy`; count what happens
    from `measure_from` on (the policy learns from the start)."""
    name, out = fn.name, Outcome(invocations=sum(1 for t, _ in fn.invocations if t >= measure_from))
    w = measure_from
    observe_arrival, observe_end = policy.observe_arrival, policy.observe_end
    keep_until, release_after_end, prewarm_at = policy.keep_until, policy.release_after_end, policy.prewarm_at
    idle: list[tuple[float, float]] = []  # (idle from, reap at), most recently used last
    busy: list[float] = []  # heap of end times, one per running invocation
    next_reap = INF  # min of the idle sandboxes' reap times
    warm_at, warm_since = INF, 0.0  # the pending pre-warm, and the idle_since it was computed from
    running = 0
    for t, duration in [*fn.invocations, (horizon, -1.0)]:
        while True:  # ends, reaps and pre-warms up to t, in time order (ends first on ties)
            t_end = busy[0] if busy else INF
            if t_end <= t and t_end <= next_reap and t_end <= warm_at:
                heapq.heappop(busy)
                level = running  # the sandbox freed as concurrency falls from `level`
                running -= 1
                observe_end(name, t_end)
                if not release_after_end(name, level):
                    until = keep_until(name, t_end, level)
                    idle.append((t_end, until))
                    next_reap = min(next_reap, until)
                if running == 0:
                    at = prewarm_at(name, t_end)
                    warm_at, warm_since = (INF, 0.0) if at is None else (at, t_end)
            elif next_reap <= t and next_reap <= warm_at:
                sandbox = next(s for s in idle if s[1] == next_reap)
                idle.remove(sandbox)
                out.idle_s += max(0.0, next_reap - max(sandbox[0], w))
                next_reap = min((s[1] for s in idle), default=INF)
            elif warm_at <= t:
                until = keep_until(name, warm_since, 1)
                if not idle and until > warm_at:
                    idle.append((warm_at, until))
                    next_reap = until
                    out.created += warm_at >= w
                    out.prewarmed += warm_at >= w
                warm_at = INF
            else:
                break
        if duration < 0:  # the end of the trace: what is still idle counts until here
            out.idle_s += sum(max(0.0, t - max(s[0], w)) for s in idle)
            return out
        warm_at = INF
        observe_arrival(name, t)
        if idle:
            since, until = idle.pop()
            out.idle_s += max(0.0, t - max(since, w))
            if until == next_reap:
                next_reap = min((s[1] for s in idle), default=INF)
        elif t >= w:
            out.cold += 1
            out.created += 1
        running += 1
        heapq.heappush(busy, t + duration)
    raise AssertionError("unreachable")


def policies() -> list[tuple[str, KeepAlivePolicy, float | None]]:
    """(name, policy, fixed keep-alive in minutes or None): the fixed curve, then the hybrids."""
    out: list[tuple[str, KeepAlivePolicy, float | None]] = [
        (f"fixed {m} min", FixedKeepAlive(m * 60), m) for m in FIXED_MIN]
    out.append(("hybrid", HybridHistogramPolicy(), None))
    out.append(("hybrid 1-level", HybridHistogramPolicy(max_levels=1), None))
    out.append(("hybrid (paper)", HybridHistogramPolicy(max_levels=1, debias_cv=False), None))
    return out


_TRACE: list[Function] = []  # set before the worker processes fork


def run_policy(index: int, horizon: float, measure_from: float) -> dict[str, Any]:
    """Simulate every function under policy `index` of `policies()`, and summarize."""
    started = time.perf_counter()
    name, policy, minutes = policies()[index]
    outcomes = {fn.name: simulate_function(policy, fn, horizon, measure_from) for fn in _TRACE}
    modes: dict[str, Counter[str]] = {kind: Counter() for kind in CLASSES}
    for fn in _TRACE:
        modes[fn.kind][policy.decision(fn.name).mode.value] += 1
    row = summarize(name, minutes, outcomes, _TRACE, horizon - measure_from)
    row["modes_at_end"] = {kind: dict(sorted(c.items())) for kind, c in modes.items()}
    row["parameters"] = {k: v for k, v in vars(policy).items() if not k.startswith("_")}
    row["simulation_s"] = time.perf_counter() - started
    return row


def summarize(name: str, minutes: float | None, outcomes: dict[str, Outcome], functions: list[Function],
              horizon: float) -> dict[str, Any]:
    invocations = sum(o.invocations for o in outcomes.values())
    cold = sum(o.cold for o in outcomes.values())
    idle_s = sum(o.idle_s for o in outcomes.values())
    per_class = {}
    for kind in CLASSES:
        mine = [(f, outcomes[f.name]) for f in functions if f.kind == kind]
        n = sum(o.invocations for _, o in mine)
        per_class[kind] = {
            "invocations": n,
            "cold_pct": 100 * sum(o.cold for _, o in mine) / max(1, n),
            "mean_function_cold_pct": statistics.fmean(100 * o.cold / o.invocations for _, o in mine if o.invocations),
            "idle_sandbox_hours": sum(o.idle_s for _, o in mine) / 3600,
        }
    rates = sorted(100 * o.cold / o.invocations for o in outcomes.values() if o.invocations)
    return {
        "policy": name,
        "keep_alive_min": minutes,
        "invocations": invocations,
        "cold_starts": cold,
        "cold_pct": 100 * cold / invocations,
        "mean_function_cold_pct": statistics.fmean(rates),
        "p75_function_cold_pct": rates[min(len(rates) - 1, math.ceil(0.75 * len(rates)) - 1)],
        "idle_sandbox_hours": idle_s / 3600,
        "idle_sandbox_seconds": idle_s,
        "wasted_gb_hours": sum(outcomes[f.name].idle_s * f.memory_mb / 1024 for f in functions) / 3600,
        "mean_idle_sandboxes": idle_s / horizon,
        "created": sum(o.created for o in outcomes.values()),
        "prewarmed": sum(o.prewarmed for o in outcomes.values()),
        "per_class": per_class,
    }


# -- reporting ----------------------------------------------------------------------------------

def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x on the piecewise-linear curve through `points` (sorted by x); None outside it."""
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def position(rows: list[dict[str, Any]], metric: str, label: str, kind: str | None = None) -> list[str]:
    """Where each hybrid sits on the fixed-policy curve of `metric` against idle sandbox-hours
    (of one class of functions if `kind`)."""
    def point(r: dict[str, Any]) -> tuple[float, float]:
        part = r["per_class"][kind] if kind else r
        return part["idle_sandbox_hours"], part[metric]

    fixed = sorted((r for r in rows if r["keep_alive_min"] is not None), key=lambda r: point(r)[0])
    x10, y10 = point(next(r for r in fixed if r["keep_alive_min"] == 10))
    lines = [f"{label}: fixed 10 min: {y10:.3f}% at {x10:.0f} idle sandbox-hours"]
    curve = [point(r) for r in fixed]
    inverse = sorted((y, x) for x, y in curve)
    for r in rows:
        if r["keep_alive_min"] is not None:
            continue
        x, y = point(r)
        same_idle, same_cold = interpolate(curve, x), interpolate(inverse, y)
        line = f"  {r['policy']}: {y:.3f}% at {x:.0f} idle sandbox-hours;"
        line += (f" fixed timers at that idle budget: ~{same_idle:.3f}%;" if same_idle is not None
                 else " idle budget outside the fixed curve;")
        line += (f" fixed timers need ~{same_cold:.0f} ({same_cold / x:.2f}x) for that rate"
                 if same_cold is not None else " no fixed timer tried reaches that rate")
        lines.append(line)
    return lines


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'policy':<16}{'cold %':>8}{'fn-mean %':>10}{'idle sbx-h':>11}{'idle GB-h':>10}{'avg idle':>9}"
            f"{'created':>9}{'prewarm':>8}  |{'rare':>16}{'periodic':>16}{'hot':>17}")
    sub = f"{'':<81}  |{'cold% / idle-h':>16}{'cold% / idle-h':>16}{'cold% / idle-h':>17}"
    lines = [head, sub, "-" * len(head)]
    for r in rows:
        c = r["per_class"]
        lines.append(
            f"{r['policy']:<16}{r['cold_pct']:>8.3f}{r['mean_function_cold_pct']:>10.1f}"
            f"{r['idle_sandbox_hours']:>11.0f}{r['wasted_gb_hours']:>10.0f}{r['mean_idle_sandboxes']:>9.1f}"
            f"{r['created']:>9}{r['prewarmed']:>8}  |"
            f"{c['rare']['cold_pct']:>10.1f} /{c['rare']['idle_sandbox_hours']:>4.0f}"
            f"{c['periodic']['cold_pct']:>10.2f} /{c['periodic']['idle_sandbox_hours']:>4.0f}"
            f"{c['hot']['cold_pct']:>10.3f} /{c['hot']['idle_sandbox_hours']:>5.0f}")
    return "\n".join(lines)


def report(data: dict[str, Any]) -> None:
    """The table and where each hybrid sits on the fixed curve, from the JSON."""
    trace, rows = data["trace"], data["results"]
    classes = trace["classes"]
    warmup = (f" after a {trace['warmup_hours']:g} h warm-up" if trace["warmup_hours"]
              else ", policies learning from nothing")
    print(f"trace: {trace['functions']} functions over {trace['hours']:g} h{warmup}, seed {trace['seed']}, "
          f"{sum(c['invocations'] for c in classes.values())} invocations ("
          + ", ".join(f"{k}: {c['functions']} functions, {c['invocations']} calls" for k, c in classes.items()) + ")")
    print()
    print(table(rows))
    print()
    for line in (line for lines in data["position"].values() for line in lines):
        print(line)
    for r in rows:
        if r["keep_alive_min"] is None:
            print(f"{r['policy']} modes at the end: " + "; ".join(
                f"{k}: " + ", ".join(f"{m} {n}" for m, n in v.items()) for k, v in r["modes_at_end"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--functions", type=int, default=200)
    parser.add_argument("--hours", type=float, default=24.0, help="length of the measured trace")
    parser.add_argument("--warmup-hours", type=float, default=0.0,
                        help="trace before the measured part, for the policies to learn from (default none)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="simulations run in parallel")
    parser.add_argument("--out", help="the JSON file to write (default bench/results/keepalive-<time>.json)")
    args = parser.parse_args()

    started = time.perf_counter()
    measure_from = args.warmup_hours * 3600
    horizon = measure_from + args.hours * 3600
    _TRACE[:] = make_trace(args.functions, args.warmup_hours + args.hours, args.seed)
    counts = Counter(f.kind for f in _TRACE)
    calls: Counter[str] = Counter()
    for f in _TRACE:
        calls[f.kind] += sum(1 for t, _ in f.invocations if t >= measure_from)
    indices = range(len(policies()))
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(min(args.jobs, len(indices))) as pool:
            rows = pool.starmap(run_policy, [(i, horizon, measure_from) for i in indices])
    else:
        rows = [run_policy(i, horizon, measure_from) for i in indices]

    positions = {"overall": position(rows, "cold_pct", "cold starts, % of all invocations"),
                 "function_mean": position(rows, "mean_function_cold_pct", "cold starts, mean of the functions' %")}
    for kind in CLASSES:
        positions[kind] = position(rows, "cold_pct", f"{kind} functions, % of their invocations", kind)
    data = {
        "benchmark": "keepalive",
        "trace": {"functions": len(_TRACE), "hours": args.hours, "warmup_hours": args.warmup_hours, "seed": args.seed,
                  "classes": {k: {"functions": counts[k], "invocations": calls[k]} for k in CLASSES}},
        "results": rows,
        "position": positions,
        "wall_s": time.perf_counter() - started,
    }
    report(data)
    out = write_results(data, args.out, "keepalive")
    print(f"\nwrote {shown(out)} in {data['wall_s']:.1f} s")
    if plots.available():
        for png in plots.plot_file(out):
            print(f"wrote {shown(png)}")
    else:
        print("matplotlib is not installed (`make bench` installs it): no plot written (the JSON has every point)")


if __name__ == "__main__":
    main()
