"""HybridHistogramPolicy's recording of idle times (in line in observe_arrival), and the
Decision's `release_after_end` reading (worked out when the decision is made)."""

from __future__ import annotations

import pytest

from firebox.workers.keepalive import Decision, HybridHistogramPolicy, Mode


def test_idle_times_land_in_their_bins_or_out_of_range() -> None:
    policy = HybridHistogramPolicy(bin_s=60.0, range_s=600.0, max_levels=2)
    now = 0.0
    # (idle time before the arrival); a clock that went back counts as 0
    for gap in (0.0, 59.9, 60.0, -5.0, 599.9, 600.0, 7200.0, 30.0):
        now += gap
        policy.observe_arrival("f", now)
        policy.observe_end("f", now)
    level = policy._functions["f"].levels[0]
    # The first arrival has no idle time before it.
    assert level.bins[:2] == [3, 1] and level.bins[9] == 1 and sum(level.bins) == 5
    assert level.in_range == 5 and level.sum_squares == 3 * 3 + 1 + 1
    assert level.out_of_range == 2 and list(level.recent_oor) == pytest.approx([600.0, 7200.0])
    assert level.oor_mean == pytest.approx(0.5 * 7200.0 + 0.5 * 600.0)
    stats = policy.statistics()
    assert (stats.idle_times, stats.out_of_range) == (7, 2)


def test_only_levels_up_to_max_levels_are_recorded() -> None:
    policy = HybridHistogramPolicy(max_levels=2)
    for now in (0.0, 100.0):
        for _ in range(3):
            policy.observe_arrival("f", now)
        for _ in range(3):
            policy.observe_end("f", now + 1)
    assert len(policy._functions["f"].levels) == 2
    assert policy.statistics().idle_times == 2  # levels 1 and 2 saw one idle time each
    assert policy._functions["f"].running == 0


def test_release_after_end_is_read_off_the_prewarm_window() -> None:
    assert Decision(Mode.HISTOGRAM, 5.0, 10.0).release_after_end is True
    assert Decision(Mode.HISTOGRAM, 0.0, 10.0).release_after_end is False
    assert Decision(Mode.FIXED, 0.0, 600.0) == Decision(Mode.FIXED, 0.0, 600.0)
    assert Decision(Mode.FIXED, 0.0, 600.0) != Decision(Mode.FIXED, 1.0, 600.0)
    assert repr(Decision(Mode.FIXED, 0.0, 600.0)) == "Decision(mode=<Mode.FIXED: 'fixed'>, prewarm_s=0.0, keep_alive_s=600.0)"
    with pytest.raises(AttributeError):
        Decision(Mode.FIXED, 0.0, 600.0).release_after_end = True  # type: ignore[misc]
