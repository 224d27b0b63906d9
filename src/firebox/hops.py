"""Hop-by-hop timing of the synchronous invoke path, for `bench/hops.py`. Off unless the server
runs with `FIREBOX_TRACE_HOPS=1`.

Each layer marks the moment its part of a request ends; consecutive marks give the hops:

    received   the edge read the request's first bytes          (edge)
    parsed     its answering task starts: HTTP parse + dispatch  (edge)
    routed     the operation matched, its input parsed and valid (frontend)
    resolved   the function (alias, version) resolved            (invoker)
    counted    a concurrency slot taken                          (invoker, counter)
    leased     a warm sandbox leased                             (workers)
    delivered  the event handed to the runtime's pending GET     (sandbox, Runtime API)
    answered   the runtime's response is in: runtime + handler   (sandbox)
    recorded   END and REPORT logged, the sandbox ready again    (sandbox)
    released   lease and concurrency slot given back             (invoker)
    rendered   the HTTP response built                           (frontend)
    written    the response written to the socket                (edge)

How: the edge starts a `Trace` in the request's answering task (a context variable, so every
layer reaches it through the awaits without an argument); `mark` appends to it, or does
nothing when no trace is running; the edge closes the trace after its write. Only traces
holding exactly the marks above, in that order, are kept (the last `KEPT` of them):
asynchronous invokes, other operations and cold starts (whose lease starts a sandbox) are left
out by that rule or by the caller, not by special cases here.

While tracing is off (the default), `mark` is not even that function: `enable` binds it, and
until then the name is bound to a builtin that ignores its argument (the layers call
`hops.mark(...)` and never import the name itself, so each call finds whichever is bound):
520 instructions less per mark than a context-variable read, 4,700 per invocation (nine marks).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from time import perf_counter_ns

MARKS = ("received", "parsed", "routed", "resolved", "counted", "leased", "delivered", "answered",
         "recorded", "released", "rendered", "written")
KEPT = 20_000

_current: ContextVar[Trace | None] = ContextVar("firebox_hop_trace", default=None)
_kept: deque[tuple[int, list[int]]] = deque(maxlen=KEPT)  # (its number, its mark times)
_finished = 0
# On or off: read as a module attribute by the edge, which asks at every request (a fraction of
# a call); `enabled()` for everyone else.
tracing = False


class Trace:
    __slots__ = ("names", "open", "times")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.times: list[int] = []
        self.open = True


def enable() -> None:
    global mark, tracing
    tracing = True
    mark = _mark


def disable() -> None:
    global mark, tracing
    tracing = False
    mark = _ignore


def enabled() -> bool:
    return tracing


def start(received_ns: int) -> Trace | None:
    """A trace for the request being answered in this task, or None when tracing is off."""
    if not tracing:
        return None
    trace = Trace()
    _current.set(trace)
    trace.names += ("received", "parsed")
    trace.times += (received_ns, perf_counter_ns())
    return trace


def _mark(name: str) -> None:
    """`mark` while tracing is on."""
    trace = _current.get()
    if trace is not None and trace.open:
        trace.names.append(name)
        trace.times.append(perf_counter_ns())


# `mark` while tracing is off: any builtin that takes one argument and has no effect; the
# layers ignore what `mark` returns. (An empty Python function costs twice as much to call.)
_ignore: Callable[[str], object] = len
mark: Callable[[str], object] = _ignore


def finish(trace: Trace | None) -> None:
    """Mark `written`, close the trace (tasks it started hold it too) and keep it if whole."""
    if trace is None:
        return
    global _finished
    _mark("written")
    trace.open = False
    if tuple(trace.names) == MARKS:
        _finished += 1
        _kept.append((_finished, trace.times))


def summary(after: int = 0) -> dict[str, object]:
    """Per hop (named by the mark that ends it): p50, p99 and mean in microseconds, over the
    kept traces numbered above `after` (a caller reads `last` first, runs its requests, then
    asks with `after=last`); and the same for the whole time inside the server."""
    traces = [times for number, times in _kept if number > after]
    hops: dict[str, dict[str, float]] = {}
    if not traces:
        return {"traces": 0, "last": _finished, "hops": hops}
    for index, name in enumerate(MARKS[1:], start=1):
        hops[name] = _stats([(t[index] - t[index - 1]) / 1000 for t in traces])
    return {"traces": len(traces), "last": _finished, "hops": hops,
            "server": _stats([(t[-1] - t[0]) / 1000 for t in traces])}


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_us": statistics.median(ordered), "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "mean_us": statistics.fmean(ordered)}
