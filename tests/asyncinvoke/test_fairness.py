"""Fairness (issue 4, "Done means"): a flood of events for one function does not hold back
another function's event.

The bound (dispatcher.py docstring): each function has at most `per_function` events in flight
(default 8) out of `concurrency` (default 32), and every dispatch pass visits the functions with
due events in rotation, so an event of g accepted while f floods the queue waits for at most
one pass (milliseconds of store reads) plus g's own cold start, however deep f's backlog is.
The test asserts that g ran while f still had events queued, and a generous wall-clock bound
(10 s, cold start included) so a slow machine does not fail it; it prints the measured delay."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.e2e.helpers import FireboxServer, wait_for

from .support import create_worker, event_stats, log_lines, logs_client, runs, send_event, wait_drained, wait_stats

FLOOD = 300
FLOOD_SLEEP_S = 0.2  # 300 x 0.2 s / 8 in flight = a backlog of ~7.5 s
GENEROUS_BOUND_MS = 10_000


def test_flood_of_one_function_does_not_starve_another(aserver: FireboxServer, lam: Any, logs: Any) -> None:
    f = create_worker(lam, sleep=FLOOD_SLEEP_S, prefix="flood")
    g = create_worker(lam, prefix="fair")

    with ThreadPoolExecutor(16) as pool:
        accepted = list(pool.map(lambda i: send_event(lam, f, {"i": i}), range(FLOOD)))
    assert len(set(accepted)) == FLOOD
    backlog = event_stats(aserver)[f]
    assert backlog["queued"] > 0, f"the flood must still be queued when g's event arrives: {backlog}"

    g_id = send_event(lam, g, {"g": True})
    accepted_ms = int(time.time() * 1000)
    f_left_at_g: dict[str, int] = {}

    def g_ran() -> Any:
        found = [r for r in runs(logs, g) if r.request_id == g_id]
        if found:
            f_left_at_g.update(event_stats(aserver)[f])
        return found

    [ran] = wait_for(g_ran, deadline_s=30, what="g's event to run")
    delay_ms = ran.timestamp_ms - accepted_ms
    wait_drained(aserver, f, deadline_s=120)
    f_runs = runs(logs, f)
    f_after_g = sum(1 for r in f_runs if r.timestamp_ms > ran.timestamp_ms)
    print(f"\nfairness: g's event ran {delay_ms} ms after its 202 (cold start included) with f's backlog "
          f"{backlog} at g's acceptance and {f_left_at_g} when g's run was seen; {f_after_g} of f's "
          f"{len(f_runs)} runs came after g's")
    assert f_left_at_g["queued"] > 0 and f_after_g > 0, (
        f"g's event must run while f still has a backlog: f {f_left_at_g} when g's run was seen, "
        f"{f_after_g} of f's runs after g's")
    assert delay_ms < GENEROUS_BOUND_MS, f"g waited {delay_ms} ms behind f's flood (bound {GENEROUS_BOUND_MS} ms)"


def _intervals(logs: Any, name: str) -> list[tuple[int, int]]:
    """Each invocation's [START, END] timestamps (ms), from the platform's lines in its log."""
    starts: dict[str, int] = {}
    spans = []
    for line in log_lines(logs, name):
        word, _, rest = line.message.partition(" RequestId: ")
        request_id = rest.split(" ", 1)[0]
        if word == "START":
            starts[request_id] = line.timestamp_ms
        elif word == "END" and request_id in starts:
            spans.append((starts.pop(request_id), line.timestamp_ms))
    return spans


def _peak(spans: list[tuple[int, int]]) -> int:
    """The most intervals open at once; one that ends when another starts does not overlap it."""
    edges = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_concurrency_caps_per_function_and_overall(server_factory: Any) -> None:
    """FIREBOX_ASYNC_PER_FUNCTION and FIREBOX_ASYNC_CONCURRENCY bound the invocations running
    at once (their START..END spans in the logs), and every event still runs."""
    srv = server_factory(env={"FIREBOX_ASYNC_CONCURRENCY": "3", "FIREBOX_ASYNC_PER_FUNCTION": "2"})
    lam = srv.client()
    names = [create_worker(lam, sleep=0.3, prefix=f"cap{i}") for i in range(3)]
    for name in names:
        for i in range(6):
            send_event(lam, name, {"i": i})
    for name in names:
        wait_stats(srv, name, deadline_s=60, succeeded=6)
    logs = logs_client(srv)
    spans = {name: _intervals(logs, name) for name in names}
    assert all(len(s) == 6 for s in spans.values()), spans
    peaks = [_peak(s) for s in spans.values()]
    peak_total = _peak([span for s in spans.values() for span in s])
    print(f"\ncaps: peak running per function {peaks} (cap 2), overall {peak_total} (cap 3)")
    assert all(p <= 2 for p in peaks), peaks
    assert peak_total <= 3, peak_total
    assert peak_total >= 2, "the caps should still let events run side by side"
