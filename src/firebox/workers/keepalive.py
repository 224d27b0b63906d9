"""Keep-alive policies: how long an idle sandbox of a function stays warm, and when to pre-warm one.

The worker manager tells a policy when invocations start and end (`observe_arrival`,
`observe_end`), and asks it, when a sandbox goes idle, until when to keep it (`keep_until`) and
whether to unload it at once because a fresh one will be created shortly before the next
invocation is expected (`release_after_end`, `prewarm_at`). Times are plain seconds on the
manager's clock, passed in: no policy reads a clock, so every policy is deterministic.

`FixedKeepAlive` is the baseline (AWS keeps about 10 minutes, Azure 20): every idle sandbox lives
`keep_alive_s`, nothing is pre-warmed.

`HybridHistogramPolicy` is the hybrid histogram policy of "Serverless in the Wild" (Shahrad et al.,
USENIX ATC 2020, section 4.2), learned per function, extended to concurrency levels.

Algorithm
---------
An *idle time* (IT) is the gap between the end of a function's last running invocation and the
start of its next one (the paper's definition). Each function keeps a histogram of its ITs in
`bin_s` bins (1 minute) up to `range_s` (4 hours, 240 bins); longer ITs are counted apart as out
of range (OOR; "out of bounds" in the paper). A decision is a pair (pre-warm window, keep-alive
window) measured from the moment the function went idle, and comes from one of three modes:

- histogram: at least `min_samples` in-range ITs, at most `oob_threshold` (50%) of all ITs out of
  range, and a coefficient of variation (CV) of the bin counts of at least `cv_threshold` (2, the
  value of the paper's reproduction in dslab: one sharp peak has a high CV, a flat spread a low one).
      head = lower edge of the bin holding the 5th percentile, tail = upper edge of the 99th's
      prewarm    = head * (1 - margin)                        (margin 10%)
      keep-alive = tail * (1 + margin) - prewarm
  With prewarm > 0 the sandbox is unloaded right after the invocation, a new one is created at
  idle_since + prewarm and kept until idle_since + tail * 1.1. With prewarm = 0 (the head is in
  the first bin) the sandbox simply stays loaded until then.
  With `debias_cv` (our change, on by default) the CV is first corrected for sampling noise: n
  samples scattered over B bins have a CV near sqrt(B / n) even when the ITs follow no pattern at
  all (10 memoryless ITs in 240 bins: 4.8), and the paper's test would call that representative.
  For bin probabilities p_i, E[raw CV^2] = B/n + (1 - 1/n) B sum(p_i^2) - 1, so the estimate of
  the true CV^2 = B sum(p_i^2) - 1 is (raw CV^2 + 1 - B/n) / (1 - 1/n) - 1 (floored at 0).
- predictor: more than `oob_threshold` of the ITs are out of range. The paper forecasts the next
  IT with ARIMA; we use a stand-in: an exponentially weighted mean `p` of the OOR ITs (weight
  `predictor_alpha` on the newest), pre-warm at 0.85 p and keep for 0.30 p (the window
  [0.85 p, 1.15 p]). The stand-in has no forecast error of its own, so it is trusted only when
  the last (up to 8) OOR ITs agree (their CV is at most `predictor_max_cv`) and there are at
  least `predictor_min_samples` of them; otherwise the function falls back.
- fallback: a new function, too few samples, or a flat histogram. The paper keeps the sandbox for
  the whole range (4 h); on one machine that is too much memory per rarely used function, so we
  keep it `fallback_keep_alive_s` (10 minutes, the AWS figure), without pre-warming.

Concurrency levels (our extension; `max_levels=1` is the paper's policy). The paper has one
sandbox per application; we run one per concurrent invocation, and the scale-out sandboxes see
other gaps than the first: a function at 2-5 concurrent invocations for a few seconds every
minute has function ITs of a minute, but needs its fifth sandbox much less often. So the level-k
idle time is the gap between the function's concurrency falling below k and rising to k again
(level 1 is the paper's IT), with one histogram per level up to `max_levels`. The sandbox freed
when concurrency falls from k to k-1 is a level-k sandbox, and with most-recently-used reuse it
stays level k while idle (with c invocations running, the idle sandboxes from the top of the
stack down are levels c+1, c+2, ...). Levels >= 2 never pre-warm: in histogram mode they are kept
until their tail * 1.1, otherwise for the fallback.

Decisions are cached per level and recomputed after every new IT while a level has fewer than
64, then after every n/64 new ones (1.6% growth): a hot function costs O(1) per invocation.

Worked example: a timer fires every 10 minutes and runs 100 ms, so each IT is 9 min 59.9 s, in
bin 9 ([9, 10) min). After 10 runs the histogram holds 10 samples in one bin (CV 15.5, raw and
debiased alike: mode histogram): head = 9 min, prewarm = 8.1 min; tail = 10 min, so the sandbox
lives until 11 min: keep-alive = 2.9 min. After each run the sandbox is unloaded, re-created
8.1 min later and found warm by the next run 1.9 min after that: 1.9 idle sandbox-minutes per
10 minutes where a fixed 10-minute timer spends 10 (and misses whenever the timer fires more
than 0.1 s late). A function called 20 times a minute has all its level-1 ITs in bin 0:
prewarm = 0, its sandbox stays loaded 1.1 min after each call, and a quiet night costs 66 s of
idle time, not 10 minutes.

`bench/keepalive.py` replays a synthetic day (rare, periodic and hot functions) against both
policies and reports cold starts against idle sandbox-hours.

Known caveats
-------------
- The histograms never forget: a function whose pattern changes (a timer moved from 10 to 30
  minutes) keeps its old peak, diluted, until new samples outweigh it. The paper does the same.
- Keeping until the 99th percentile is generous: a function whose ITs are memoryless but
  concentrated enough to pass the CV test (calls every ~20 min at random) is kept ~1.5 h after
  each call. Raise `cv_threshold` or lower `tail_percentile` to be stingier.
- Without `debias_cv` (the paper's test) sparse histograms pass by chance: a function called at
  random every hour or two is judged representative after 10 calls and kept up to ~4.4 h after
  each: warm starts bought with a lot of memory (the bench shows it as "hybrid (paper)").
- Nothing beats a timer on memoryless traffic: for Poisson-like hot functions the policy lands on
  (slightly above) the fixed-timer curve in the bench; its gains come from periodic functions.
- The stand-in predictor is much weaker than ARIMA; it suits functions on a long regular period
  (every 6 h, daily) and falls back for irregular rare ones.
- A sandbox's level is fixed when it goes idle; reaping one from the middle of the idle stack
  (levels are reaped out of order) leaves the ones below it one level too high until reused.
- Pre-warming creates sandboxes nobody has asked for yet: the manager must bound them like any
  other creation, and a pre-warm that finds an idle sandbox of the function should do nothing.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Decision",
    "FixedKeepAlive",
    "HybridHistogramPolicy",
    "KeepAlivePolicy",
    "KeepAliveStatistics",
    "Mode",
]


class Mode(enum.StrEnum):
    FIXED = "fixed"  # the baseline timer
    HISTOGRAM = "histogram"  # windows from the 5th and 99th percentiles of the IT histogram
    PREDICTOR = "predictor"  # windows around a forecast of the next out-of-range IT
    FALLBACK = "fallback"  # new, sparse or flat: a plain keep-alive


@dataclass(frozen=True)
class Decision:
    """What to do with a sandbox once it goes idle at t: keep it (or, if `prewarm_s` > 0,
    unload it and create a new one at t + prewarm_s) until t + prewarm_s + keep_alive_s."""

    mode: Mode
    prewarm_s: float
    keep_alive_s: float
    # Unload the sandbox as soon as its invocation ends (a new one is pre-warmed). Worked out
    # once: decisions are cached and read at every release (a property cost 1,000 instructions).
    release_after_end: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "release_after_end", self.prewarm_s > 0)

    def prewarm_at(self, idle_since: float) -> float | None:
        return idle_since + self.prewarm_s if self.prewarm_s > 0 else None

    def keep_until(self, idle_since: float) -> float:
        return idle_since + self.prewarm_s + self.keep_alive_s


@dataclass(frozen=True)
class KeepAliveStatistics:
    functions: int  # functions with state (observed and not forgotten)
    histogram: int  # ... of which each mode decides at level 1
    predictor: int
    fallback: int
    idle_times: int  # idle times recorded, every level, in range or not
    out_of_range: int


class KeepAlivePolicy(Protocol):
    """Times are seconds on the caller's clock; `function` is any hashable key (the manager uses
    (name, version)). `level` is 1 + the number of the function's invocations still running when
    the sandbox went idle: 1 for the last one to finish, 2+ for scale-out sandboxes.

    `keep_until`, `prewarm_at` and `release_after_end` are the `Decision`'s own readings (the
    manager asks for the decision once when a sandbox is released and reads all three off it)."""

    def observe_arrival(self, function: Hashable, now: float) -> None:
        """An invocation of `function` starts (warm or cold)."""

    def observe_end(self, function: Hashable, now: float) -> None:
        """An invocation of `function` ended, whatever its outcome."""

    def decision(self, function: Hashable, level: int = 1) -> Decision:
        """The current windows (fallback ones for an unknown function)."""

    def keep_until(self, function: Hashable, idle_since: float, level: int = 1) -> float:
        """When to reap a sandbox that went idle at `idle_since` (a pre-warmed sandbox keeps
        the idle_since of the invocation before it)."""

    def prewarm_at(self, function: Hashable, idle_since: float) -> float | None:
        """When to create a sandbox ahead of the next expected arrival; None for never."""

    def release_after_end(self, function: Hashable, level: int = 1) -> bool:
        """True when the sandbox should be unloaded as soon as its invocation ends (a new one
        will be pre-warmed at `prewarm_at`)."""

    def forget(self, function: Hashable) -> None:
        """Drop what is known of `function` (it was deleted)."""

    def statistics(self) -> KeepAliveStatistics: ...


class FixedKeepAlive:
    """The baseline: every idle sandbox lives `keep_alive_s`, nothing is pre-warmed."""

    def __init__(self, keep_alive_s: float) -> None:
        if keep_alive_s < 0:
            raise ValueError(f"keep_alive_s must be >= 0, not {keep_alive_s}")
        self.keep_alive_s = float(keep_alive_s)
        self._decision = Decision(Mode.FIXED, 0.0, self.keep_alive_s)

    def __repr__(self) -> str:
        return f"FixedKeepAlive({self.keep_alive_s:g})"

    def observe_arrival(self, function: Hashable, now: float) -> None:
        pass

    def observe_end(self, function: Hashable, now: float) -> None:
        pass

    def decision(self, function: Hashable, level: int = 1) -> Decision:
        return self._decision

    def keep_until(self, function: Hashable, idle_since: float, level: int = 1) -> float:
        return self._decision.keep_until(idle_since)

    def prewarm_at(self, function: Hashable, idle_since: float) -> float | None:
        return self._decision.prewarm_at(idle_since)

    def release_after_end(self, function: Hashable, level: int = 1) -> bool:
        return self._decision.release_after_end

    def forget(self, function: Hashable) -> None:
        pass

    def statistics(self) -> KeepAliveStatistics:
        return KeepAliveStatistics(0, 0, 0, 0, 0, 0)


@dataclass
class _Level:
    """The idle-time record of one concurrency level of one function."""

    bins: list[int]
    in_range: int = 0
    sum_squares: int = 0  # of the bin counts, for an O(1) CV
    out_of_range: int = 0
    recent_oor: deque[float] = field(default_factory=lambda: deque(maxlen=8))
    oor_mean: float | None = None  # exponentially weighted
    idle_since: float | None = None  # when concurrency last fell below this level
    cached: Decision | None = None
    fresh_until: int = 0  # recompute `cached` once this many ITs are recorded


@dataclass
class _Function:
    running: int = 0
    levels: list[_Level] = field(default_factory=list)  # levels[k - 1] is level k


class HybridHistogramPolicy:
    """The hybrid histogram policy, per function and concurrency level (module docstring)."""

    def __init__(
        self,
        *,
        bin_s: float = 60.0,
        range_s: float = 4 * 3600.0,
        min_samples: int = 10,
        cv_threshold: float = 2.0,
        oob_threshold: float = 0.5,
        head_percentile: float = 5.0,
        tail_percentile: float = 99.0,
        margin: float = 0.10,
        fallback_keep_alive_s: float = 600.0,
        predictor_alpha: float = 0.5,
        predictor_margin: float = 0.15,
        predictor_min_samples: int = 3,
        predictor_max_cv: float = 0.5,
        max_levels: int = 8,
        debias_cv: bool = True,
    ) -> None:
        if not 0 < bin_s <= range_s:
            raise ValueError("need 0 < bin_s <= range_s")
        if max_levels < 1 or min_samples < 1 or fallback_keep_alive_s < 0:
            raise ValueError("need max_levels >= 1, min_samples >= 1, fallback_keep_alive_s >= 0")
        self.bin_s = bin_s
        self.n_bins = math.ceil(range_s / bin_s)
        self.range_s = self.n_bins * bin_s
        self.min_samples = min_samples
        self.cv_threshold = cv_threshold
        self.oob_threshold = oob_threshold
        self.head = head_percentile / 100
        self.tail = tail_percentile / 100
        self.margin = margin
        self.fallback_keep_alive_s = float(fallback_keep_alive_s)
        self.predictor_alpha = predictor_alpha
        self.predictor_margin = predictor_margin
        self.predictor_min_samples = predictor_min_samples
        self.predictor_max_cv = predictor_max_cv
        self.max_levels = max_levels
        self.debias_cv = debias_cv
        self._fallback = Decision(Mode.FALLBACK, 0.0, self.fallback_keep_alive_s)
        self._functions: dict[Hashable, _Function] = {}

    # -- observations ---------------------------------------------------------------------------

    def observe_arrival(self, function: Hashable, now: float) -> None:
        state = self._functions.get(function)
        if state is None:
            state = self._functions[function] = _Function()
        running = state.running = state.running + 1
        if running > self.max_levels:
            return
        levels = state.levels
        if running > len(levels):
            levels.append(_Level(bins=[0] * self.n_bins))
        level = levels[running - 1]
        idle_since = level.idle_since
        if idle_since is None:
            return
        level.idle_since = None
        # Record the idle time (not max(): see decision), in line: once per invocation.
        idle_time = now - idle_since if now > idle_since else 0.0
        if level.in_range + level.out_of_range + 1 >= level.fresh_until:
            level.cached = None
        index = int(idle_time // self.bin_s)
        if index < self.n_bins:
            count = level.bins[index]
            level.bins[index] = count + 1
            level.sum_squares += 2 * count + 1  # (c + 1)^2 - c^2
            level.in_range += 1
        else:
            self._record_out_of_range(level, idle_time)

    def observe_end(self, function: Hashable, now: float) -> None:
        state = self._functions.get(function)
        if state is None or state.running == 0:
            return  # an end we saw no start of (the policy was swapped in mid-flight)
        running = state.running
        if running <= len(state.levels):
            state.levels[running - 1].idle_since = now
        state.running = running - 1

    def _record_out_of_range(self, level: _Level, idle_time: float) -> None:
        level.out_of_range += 1
        level.recent_oor.append(idle_time)
        a = self.predictor_alpha
        level.oor_mean = idle_time if level.oor_mean is None else a * idle_time + (1 - a) * level.oor_mean

    def forget(self, function: Hashable) -> None:
        self._functions.pop(function, None)

    # -- decisions ------------------------------------------------------------------------------

    def decision(self, function: Hashable, level: int = 1) -> Decision:
        state = self._functions.get(function)
        # (Not min(max(...)): those builtins parse their arguments as keywords, 2,200
        # instructions more than the comparisons per call.)
        k = 1 if level < 1 else level if level < self.max_levels else self.max_levels
        if state is None or k > len(state.levels):
            return self._fallback
        record = state.levels[k - 1]
        if record.cached is None:
            total = record.in_range + record.out_of_range
            record.fresh_until = total + max(1, total // 64)
            d = self._decide(record)
            if k > 1 and d.mode is Mode.HISTOGRAM:  # scale-out: kept through the window
                d = Decision(d.mode, 0.0, d.prewarm_s + d.keep_alive_s)
            elif k > 1:  # no pre-warming for scale-out sandboxes
                d = self._fallback
            record.cached = d
        return record.cached

    def keep_until(self, function: Hashable, idle_since: float, level: int = 1) -> float:
        return self.decision(function, level).keep_until(idle_since)

    def prewarm_at(self, function: Hashable, idle_since: float) -> float | None:
        return self.decision(function).prewarm_at(idle_since)

    def release_after_end(self, function: Hashable, level: int = 1) -> bool:
        return self.decision(function, level).release_after_end

    def _decide(self, level: _Level) -> Decision:
        total = level.in_range + level.out_of_range
        if total == 0:
            return self._fallback
        if level.out_of_range / total > self.oob_threshold:
            return self._predict(level)
        if level.in_range < self.min_samples or self._cv(level) < self.cv_threshold:
            return self._fallback
        head = self._percentile_bin(level, self.head) * self.bin_s
        tail = (self._percentile_bin(level, self.tail) + 1) * self.bin_s
        prewarm = head * (1 - self.margin)
        return Decision(Mode.HISTOGRAM, prewarm, tail * (1 + self.margin) - prewarm)

    def _predict(self, level: _Level) -> Decision:
        recent = level.recent_oor
        if level.oor_mean is None or len(recent) < self.predictor_min_samples:
            return self._fallback
        mean = sum(recent) / len(recent)
        spread = math.sqrt(sum((x - mean) ** 2 for x in recent) / len(recent))
        if spread > self.predictor_max_cv * mean:
            return self._fallback
        p, m = level.oor_mean, self.predictor_margin
        return Decision(Mode.PREDICTOR, p * (1 - m), p * 2 * m)

    def _cv(self, level: _Level) -> float:
        """Coefficient of variation of the bin counts (population standard deviation), corrected
        for sampling noise when `debias_cv` (module docstring)."""
        n, b = level.in_range, self.n_bins
        cv2 = b * level.sum_squares / (n * n) - 1
        if self.debias_cv:
            cv2 = (cv2 + 1 - b / n) / (1 - 1 / n) - 1 if n > 1 else 0.0
        return math.sqrt(max(0.0, cv2))

    def _percentile_bin(self, level: _Level, fraction: float) -> int:
        """The first non-empty bin where the cumulative count reaches `fraction` of the ITs."""
        wanted, seen = fraction * level.in_range, 0
        for index, count in enumerate(level.bins):
            seen += count
            if count and seen >= wanted:
                return index
        return self.n_bins - 1

    # -- introspection --------------------------------------------------------------------------

    def statistics(self) -> KeepAliveStatistics:
        modes = [self.decision(f).mode for f in self._functions]
        levels = [lv for s in self._functions.values() for lv in s.levels]
        return KeepAliveStatistics(
            functions=len(modes),
            histogram=modes.count(Mode.HISTOGRAM),
            predictor=modes.count(Mode.PREDICTOR),
            fallback=modes.count(Mode.FALLBACK),
            idle_times=sum(lv.in_range + lv.out_of_range for lv in levels),
            out_of_range=sum(lv.out_of_range for lv in levels),
        )
