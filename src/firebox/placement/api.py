"""The Placement service: which worker host gets a NEW sandbox.

Contract: `choose(memory_mb)` returns a healthy host with room for `memory_mb` more, packing
hosts by memory (fill the fullest host that still fits, so idle hosts can be drained), and never
a host marked unhealthy. It knows nothing of warm sandboxes: reuse is the worker manager's job.
On a single machine there is one host, the local worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class HostRef:
    host_id: str
    capacity_mb: int
    used_mb: int
    healthy: bool = True


class Placement(Protocol):
    def choose(self, memory_mb: int) -> HostRef:
        """Raises TooManyRequests when no healthy host has room (a throttle, not a wait)."""
