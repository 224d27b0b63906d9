"""The in-process Counter: exact concurrency accounting for one machine.

Accounting (see api.py for the model): `in_use[f]` counts f's executions. A function with a
reservation R draws only from it: throttled when `in_use[f] == R`. Others draw from the
unreserved pool, whose size is `limit - sum(reservations)` (reservations as the registry reports
them with each acquire; the counter remembers the last one seen per function).

Worked example: limit 1000, g reserves 100. Unreserved = 900. f (no reservation) can run 900 at
once, g 100; a 901st f is throttled with ConcurrentInvocationLimitExceeded, a 101st g with
ReservedFunctionConcurrentInvocationLimitExceeded, and a burst of f never takes g's 100.

Known caveat: a reservation change takes effect on that function's next acquire.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

from firebox.counter.api import CounterStatistics, Token
from firebox.errors import TooManyRequests

RESERVED_EXCEEDED = "ReservedFunctionConcurrentInvocationLimitExceeded"
ACCOUNT_EXCEEDED = "ConcurrentInvocationLimitExceeded"


class LocalCounter:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_use: dict[str, int] = defaultdict(int)
        self._reservations: dict[str, int] = {}
        self._unreserved_in_use = 0
        self._serial = itertools.count(1)
        self._live: set[int] = set()

    async def acquire_nowait(self, function_name: str, reserved: int | None) -> Token:
        if reserved is None:
            self._reservations.pop(function_name, None)
        else:
            self._reservations[function_name] = reserved
        if reserved is not None:
            if self._in_use[function_name] >= reserved:
                raise TooManyRequests(RESERVED_EXCEEDED)
        else:
            pool = self._limit - sum(self._reservations.values())
            if self._unreserved_in_use >= pool:
                raise TooManyRequests(ACCOUNT_EXCEEDED)
            self._unreserved_in_use += 1
        self._in_use[function_name] += 1
        token = Token(function_name, next(self._serial), reserved is not None)
        self._live.add(token.serial)
        return token

    async def release(self, token: Token) -> None:
        if token.serial not in self._live:
            return
        self._live.discard(token.serial)
        self._in_use[token.function_name] -= 1
        if not self._in_use[token.function_name]:
            del self._in_use[token.function_name]
        if not token.reserved:
            self._unreserved_in_use -= 1

    def statistics(self) -> CounterStatistics:
        return CounterStatistics(self._limit, self._unreserved_in_use, dict(self._in_use))
