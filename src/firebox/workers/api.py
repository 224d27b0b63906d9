"""The Worker Manager: the sandboxes of every function version.

Contract
--------
- `lease(spec)` returns a sandbox that belongs to exactly `spec`'s function version (same code
  and configuration: `spec.key`) and runs nothing else until released: the most recently used
  idle one (warm start), or a new one created on the host placement picks (cold start,
  `Lease.cold`). A busy function scales out: each concurrent lease gets its own sandbox.
- `invoke(lease, ...)` runs one invocation in it; a sandbox whose init failed answers with the
  init error (Lambda reports init failures on the invocation that triggered them).
- `release(lease)` returns a healthy sandbox to its pool (MRU first) or destroys one that died
  (timeout, crash, out-of-memory) or whose spec was replaced meanwhile. Idempotent; callers
  release in `finally`.
- Idle sandboxes are reaped after the keep-alive. `retire_function(name, version)` drops the idle
  sandboxes of changed or deleted code; busy ones are destroyed when released.
- `statistics()` counts sandboxes per state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from firebox.worker.api import FunctionSpec, InvokeOutcome

__all__ = ["FunctionSpec", "InvokeOutcome", "Lease", "WorkerManager", "WorkersStatistics"]


@dataclass(frozen=True)
class WorkersStatistics:
    starting: int
    idle: int
    busy: int
    created: int
    destroyed: int


class Lease(Protocol):
    cold: bool
    spec: FunctionSpec


class WorkerManager(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def lease(self, spec: FunctionSpec) -> Lease: ...
    async def invoke(
        self, lease: Lease, *, request_id: str, payload: bytes, invoked_arn: str, client_context: str | None
    ) -> InvokeOutcome: ...
    async def release(self, lease: Lease) -> None: ...
    def retire_function(self, name: str, version: str | None = None) -> None: ...
    def statistics(self) -> WorkersStatistics: ...
