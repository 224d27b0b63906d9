"""The Worker Manager: the sandboxes of every function version.

Contract
--------
- `lease(spec)` returns a sandbox that belongs to exactly `spec`'s function version and runs
  nothing else until released: the most recently used idle one (warm start), or a new one
  created on the host placement picks (cold start, `Lease.cold` is True). A function that is
  busy scales out: each concurrent lease gets its own sandbox.
- `release(lease, reusable)` returns a healthy sandbox to its version's warm pool (MRU first) or
  destroys it (`reusable=False` after a timeout, crash or out-of-memory).
- Idle sandboxes are reaped after the keep-alive policy says so. `retire(function_name,
  keep_revision)` drains every sandbox of replaced code or configuration: idle ones are
  destroyed now, busy ones when their in-flight invocation ends.
- `statistics()` counts sandboxes per state (starting, idle, busy) and per function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class WorkersStatistics:
    starting: int
    idle: int
    busy: int
    created: int
    destroyed: int


class WorkerManager(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def statistics(self) -> WorkersStatistics: ...
