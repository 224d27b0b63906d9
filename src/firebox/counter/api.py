"""The Counter service: concurrency accounting.

Model (after trio's CapacityLimiter, without the waiting): the account has `limit` executions
(default 1000). A function with reserved concurrency R owns R of them exclusively: it can never
run more than R at once (a cap) and nothing else can use them (a guarantee). Functions without a
reservation share the unreserved pool, `limit - sum(R)`. Reserved concurrency 0 throttles every
invocation of that function.

`acquire_nowait(function)` returns a `Token` or raises `TooManyRequests` immediately with
Lambda's `Reason`: `ReservedFunctionConcurrentInvocationLimitExceeded` when the function is at
its reservation, `ConcurrentInvocationLimitExceeded` when the unreserved pool is exhausted.
`release(token)` is idempotent. Tokens are counted per function so `statistics()` can show
in-flight executions. Methods are async because the cluster counter lives in Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class Token(NamedTuple):
    """(A NamedTuple, one per invocation: half the cost of a frozen dataclass to make.)"""

    function_name: str
    serial: int
    reserved: bool  # drawn from the function's reservation (True) or the unreserved pool


@dataclass(frozen=True)
class CounterStatistics:
    limit: int
    unreserved_in_use: int
    in_use: Mapping[str, int]


class Counter(Protocol):
    async def acquire_nowait(self, function_name: str, reserved: int | None) -> Token:
        """`reserved` is the function's reserved concurrency as the registry knows it now."""

    async def release(self, token: Token) -> None: ...

    def statistics(self) -> CounterStatistics: ...
