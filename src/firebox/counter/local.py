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
        self._reserved_total = 0  # sum(self._reservations.values()), kept as they change
        self._unreserved_in_use = 0
        self._serial = itertools.count(1)
        self._live: set[int] = set()

    async def acquire_nowait(self, function_name: str, reserved: int | None) -> Token:
        reservations = self._reservations
        if reserved is None:
            if function_name in reservations:  # its reservation was removed
                self._reserved_total -= reservations.pop(function_name)
            if self._unreserved_in_use >= self._limit - self._reserved_total:
                raise TooManyRequests(ACCOUNT_EXCEEDED)
            self._unreserved_in_use += 1
        else:
            self._reserved_total += reserved - reservations.get(function_name, 0)
            reservations[function_name] = reserved
            if self._in_use[function_name] >= reserved:
                raise TooManyRequests(RESERVED_EXCEEDED)
        self._in_use[function_name] += 1
        serial = next(self._serial)
        self._live.add(serial)
        return Token(function_name, serial, reserved is not None)

    async def release(self, token: Token) -> None:
        try:
            self._live.remove(token.serial)
        except KeyError:  # released already
            return
        in_use = self._in_use
        name = token.function_name
        left = in_use[name] - 1
        if left:
            in_use[name] = left
        else:
            del in_use[name]
        if not token.reserved:
            self._unreserved_in_use -= 1

    def statistics(self) -> CounterStatistics:
        return CounterStatistics(self._limit, self._unreserved_in_use, dict(self._in_use))
