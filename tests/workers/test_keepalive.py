"""Keep-alive policies on hand-made arrival sequences: what each decides, and when."""

from __future__ import annotations

import random

import pytest

from firebox.workers.keepalive import (
    Decision,
    FixedKeepAlive,
    HybridHistogramPolicy,
    KeepAlivePolicy,
    KeepAliveStatistics,
    Mode,
)

MIN = 60.0
HOUR = 3600.0


def drive(policy: KeepAlivePolicy, function: str, calls: list[tuple[float, float]]) -> float:
    """Feed (start, duration) invocations to `policy` in time order, ends first on ties; returns
    the last end (when the function went idle)."""
    events = sorted([(start, 1, "arrival") for start, _ in calls] +
                    [(start + duration, 0, "end") for start, duration in calls])
    for now, _, kind in events:
        if kind == "arrival":
            policy.observe_arrival(function, now)
        else:
            policy.observe_end(function, now)
    return events[-1][0]


def every(period: float, n: int, duration: float = 0.1, start: float = 0.0) -> list[tuple[float, float]]:
    return [(start + k * period, duration) for k in range(n)]


def after_gaps(gaps: list[float], duration: float = 0.1) -> list[tuple[float, float]]:
    """One call, then one more after each idle gap (measured end to start)."""
    calls, t = [(0.0, duration)], 0.0
    for gap in gaps:
        t += duration + gap
        calls.append((t, duration))
    return calls


def test_fixed_policy_keeps_every_sandbox_the_same_time() -> None:
    policy = FixedKeepAlive(600)
    drive(policy, "f", every(10 * MIN, 20))
    assert policy.decision("f") == Decision(Mode.FIXED, 0.0, 600.0)
    assert policy.keep_until("f", 1000.0) == 1600.0
    assert policy.keep_until("f", 1000.0, level=3) == 1600.0
    assert policy.prewarm_at("f", 1000.0) is None
    assert policy.release_after_end("f") is False
    assert policy.statistics() == KeepAliveStatistics(0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        FixedKeepAlive(-1)


def test_periodic_function_is_prewarmed_before_the_next_tick_and_kept_briefly() -> None:
    policy = HybridHistogramPolicy()
    end = drive(policy, "timer", every(10 * MIN, 12))  # 11 idle times of 9 min 59.9 s
    d = policy.decision("timer")
    assert d.mode is Mode.HISTOGRAM
    assert d.prewarm_s == pytest.approx(9 * MIN * 0.9)  # head bin [9, 10) min, minus 10%
    assert d.prewarm_s + d.keep_alive_s == pytest.approx(10 * MIN * 1.1)  # tail edge, plus 10%
    assert d.keep_alive_s < 3 * MIN
    assert policy.release_after_end("timer") is True
    prewarm, reap = policy.prewarm_at("timer", end), policy.keep_until("timer", end)
    assert prewarm is not None and 8 * MIN <= prewarm - end <= 9 * MIN
    next_tick = end - 0.1 + 10 * MIN
    assert prewarm < next_tick < reap


def test_too_few_samples_fall_back_to_the_standard_keep_alive() -> None:
    policy = HybridHistogramPolicy(fallback_keep_alive_s=420)
    end = drive(policy, "young", every(10 * MIN, 6))  # 5 idle times < min_samples
    assert policy.decision("young") == Decision(Mode.FALLBACK, 0.0, 420.0)
    assert policy.keep_until("young", end) == end + 420
    assert policy.prewarm_at("young", end) is None
    assert policy.release_after_end("young") is False
    assert policy.decision("never-seen") == Decision(Mode.FALLBACK, 0.0, 420.0)


def test_erratic_out_of_range_idle_times_use_the_stand_in_predictor() -> None:
    policy = HybridHistogramPolicy()
    gaps = [5 * HOUR, 6.5 * HOUR, 5.5 * HOUR, 6 * HOUR]  # all beyond the 4 h range
    end = drive(policy, "nightly", after_gaps(gaps))
    d = policy.decision("nightly")
    assert d.mode is Mode.PREDICTOR
    p = gaps[0]
    for gap in gaps[1:]:  # exponentially weighted, alpha 0.5
        p = 0.5 * gap + 0.5 * p
    assert d.prewarm_s == pytest.approx(0.85 * p)
    assert d.keep_alive_s == pytest.approx(0.30 * p)
    assert policy.release_after_end("nightly") is True
    assert policy.prewarm_at("nightly", end) == pytest.approx(end + 0.85 * p)
    assert policy.keep_until("nightly", end) == pytest.approx(end + 1.15 * p)


def test_scattered_out_of_range_idle_times_are_not_forecast() -> None:
    policy = HybridHistogramPolicy()
    drive(policy, "whenever", after_gaps([4.5 * HOUR, 20 * HOUR, 5 * HOUR, 40 * HOUR]))
    assert policy.decision("whenever").mode is Mode.FALLBACK
    drive(policy, "twice", after_gaps([5 * HOUR, 6 * HOUR]))  # fewer than 3 to go on
    assert policy.decision("twice").mode is Mode.FALLBACK


def test_flat_or_sparse_histograms_are_not_representative() -> None:
    flat = HybridHistogramPolicy()
    drive(flat, "flat", after_gaps([(k % 240 + 0.5) * MIN for k in range(480)]))  # 2 in every bin
    assert flat.decision("flat").mode is Mode.FALLBACK
    # 12 memoryless-looking idle times, each in its own bin: raw CV ~4.4, debiased 0
    gaps = [(3 + 19 * k) * MIN for k in range(12)]
    paper, ours = HybridHistogramPolicy(debias_cv=False), HybridHistogramPolicy()
    drive(paper, "sparse", after_gaps(gaps))
    drive(ours, "sparse", after_gaps(gaps))
    assert paper.decision("sparse").mode is Mode.HISTOGRAM
    assert ours.decision("sparse").mode is Mode.FALLBACK


def test_hot_function_stays_loaded_for_just_over_a_minute() -> None:
    policy = HybridHistogramPolicy()
    end = drive(policy, "hot", every(5.0, 200, duration=0.05))
    assert policy.decision("hot") == Decision(Mode.HISTOGRAM, 0.0, pytest.approx(66.0))
    assert policy.release_after_end("hot") is False
    assert policy.prewarm_at("hot", end) is None
    assert policy.keep_until("hot", end) == pytest.approx(end + 66.0)


def test_scale_out_sandboxes_learn_their_own_idle_times() -> None:
    # A call every 20 s, and every 5 minutes a burst that needs a second sandbox for 2 s: the
    # second sandbox is idle 298.5 s between bursts (bin [4, 5) min), 11 bursts give 10 samples.
    bursts = range(1, 12)
    calls = every(20.0, 180) + [(300.0 * k + 10, 2.0) for k in bursts] + [(300.0 * k + 10.5, 2.0) for k in bursts]
    levels, flat = HybridHistogramPolicy(), HybridHistogramPolicy(max_levels=1)
    drive(levels, "bursty", calls)
    drive(flat, "bursty", calls)
    assert levels.decision("bursty", level=1) == Decision(Mode.HISTOGRAM, 0.0, pytest.approx(66.0))
    second = levels.decision("bursty", level=2)
    assert second.mode is Mode.HISTOGRAM and second.prewarm_s == 0.0
    assert second.keep_alive_s == pytest.approx(5 * MIN * 1.1)  # the tail bin's upper edge, +10%
    assert levels.release_after_end("bursty", level=2) is False
    assert levels.decision("bursty", level=3).mode is Mode.FALLBACK  # never reached
    assert flat.decision("bursty", level=2) == flat.decision("bursty", level=1)  # the paper's


def test_functions_are_isolated_and_can_be_forgotten() -> None:
    policy = HybridHistogramPolicy()
    timer, hot = every(10 * MIN, 12), every(5.0, 200, duration=0.05)
    events = sorted([(s, d, "timer") for s, d in timer] + [(s, d, "hot") for s, d in hot])
    for start, duration, name in events:  # interleaved in time, one invocation at a time each
        drive(policy, name, [(start, duration)])
    alone = HybridHistogramPolicy()
    drive(alone, "timer", timer)
    assert policy.decision("timer") == alone.decision("timer")
    assert policy.decision("hot").keep_alive_s == pytest.approx(66.0)
    stats = policy.statistics()
    assert (stats.functions, stats.histogram, stats.predictor, stats.fallback) == (2, 2, 0, 0)
    assert stats.idle_times == 11 + 199 and stats.out_of_range == 0
    policy.forget("timer")
    assert policy.decision("timer").mode is Mode.FALLBACK
    assert policy.decision("hot").mode is Mode.HISTOGRAM
    assert policy.statistics().functions == 1


def test_decisions_are_deterministic() -> None:
    rng = random.Random(7)
    calls = [(k * 600 + rng.uniform(0, 30), rng.uniform(0.01, 1)) for k in range(60)]
    calls += [(40000 + rng.expovariate(1 / 20), 0.1) for _ in range(50)]
    first, second = HybridHistogramPolicy(), HybridHistogramPolicy()
    drive(first, "f", calls)
    drive(second, "f", calls)
    assert [first.decision("f", k) for k in (1, 2, 3)] == [second.decision("f", k) for k in (1, 2, 3)]
    assert first.statistics() == second.statistics()
    assert first.keep_until("f", 123.0) == second.keep_until("f", 123.0)


def test_ends_without_a_start_are_ignored() -> None:
    policy = HybridHistogramPolicy()
    policy.observe_end("f", 10.0)  # e.g. the policy was installed while f was running
    policy.observe_arrival("f", 20.0)
    policy.observe_end("f", 21.0)
    policy.observe_end("f", 22.0)
    assert policy.statistics().idle_times == 0
    with pytest.raises(ValueError):
        HybridHistogramPolicy(max_levels=0)
