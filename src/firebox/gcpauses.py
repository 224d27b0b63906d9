"""The server process and Python's cyclic garbage collector: what it may skip, and what it costs.

Every collection runs on the event-loop thread and stops it: no request moves meanwhile. A full
collection (generation 2) walks every object the collector tracks, and a started server holds
hundreds of thousands of them that live as long as it does (the Lambda service model of the
edge, the modules, the registry). `freeze_startup_objects` moves them to the collector's
permanent generation once the server is up (`gc.freeze`), so full collections walk only what
was made since. Measured with a Python hello at 16 clients: full collections went from 50-65 ms
to 6.5-7 ms each (three per ~25,000 invocations), the younger generations were unchanged.

`install` counts the collections and their pauses per generation (`statistics`, in
`GET /_firebox/stats` under "gc"; bench/cpu.py reads it around its runs). It is process-wide,
like the collector: the server installs it once; a platform built inside a test process shows
zeros unless the test installed it.
"""

from __future__ import annotations

import gc
from time import perf_counter_ns
from typing import Any

GENERATIONS = (0, 1, 2)


class _Pauses:
    def __init__(self) -> None:
        self.installed = False
        self.count = [0, 0, 0]
        self.total_ns = [0, 0, 0]
        self.max_ns = [0, 0, 0]
        self._started = 0
        self.frozen = 0  # objects frozen by freeze_startup_objects

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = perf_counter_ns()
            return
        took, generation = perf_counter_ns() - self._started, info["generation"]
        self.count[generation] += 1
        self.total_ns[generation] += took
        self.max_ns[generation] = max(self.max_ns[generation], took)


_pauses = _Pauses()


def install() -> None:
    """Start counting collections and their pauses (idempotent)."""
    if not _pauses.installed:
        gc.callbacks.append(_pauses.on_gc)
        _pauses.installed = True


def freeze_startup_objects() -> None:
    """Leave every object made so far out of all later collections (see the module docstring).
    No collection first: a full one costs the start-up a tenth of a second, and the garbage it
    would find there is a few cycles, kept for good instead. Counted here, once: counting them
    walks the whole permanent generation (gc.get_freeze_count, 3-4 ms for 40,000 objects), and
    `statistics` answers every GET /_firebox/stats, which a monitor may poll."""
    gc.freeze()
    _pauses.frozen = gc.get_freeze_count()


def statistics() -> dict[str, Any]:
    """Per generation: collections, their total and longest pause (ms); and how many objects
    `freeze_startup_objects` froze."""
    return {
        "installed": _pauses.installed,
        "frozen_objects": _pauses.frozen,
        "generations": {
            str(g): {"collections": _pauses.count[g], "total_ms": _pauses.total_ns[g] / 1e6,
                     "max_ms": _pauses.max_ns[g] / 1e6}
            for g in GENERATIONS
        },
    }
