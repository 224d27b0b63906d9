"""LocalCounter: the accounting of counter/api.py, checked against a plain model of it (the
sum of the reservations recomputed at every acquire), over many random acquires and releases,
reservations changing on the way; and the Token's value semantics."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict

import pytest

from firebox.counter.api import Token
from firebox.counter.local import ACCOUNT_EXCEEDED, RESERVED_EXCEEDED, LocalCounter
from firebox.errors import TooManyRequests


class ModelCounter:
    """The accounting written the plain way (the implementation before the running total)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use: dict[str, int] = defaultdict(int)
        self.reservations: dict[str, int] = {}
        self.unreserved_in_use = 0
        self.serial = itertools.count(1)
        self.live: set[int] = set()

    def acquire(self, name: str, reserved: int | None) -> tuple[str, int, bool]:
        if reserved is None:
            self.reservations.pop(name, None)
        else:
            self.reservations[name] = reserved
        if reserved is not None:
            if self.in_use[name] >= reserved:
                raise TooManyRequests(RESERVED_EXCEEDED)
        else:
            if self.unreserved_in_use >= self.limit - sum(self.reservations.values()):
                raise TooManyRequests(ACCOUNT_EXCEEDED)
            self.unreserved_in_use += 1
        self.in_use[name] += 1
        serial = next(self.serial)
        self.live.add(serial)
        return name, serial, reserved is not None

    def release(self, token: tuple[str, int, bool]) -> None:
        name, serial, reserved = token
        if serial not in self.live:
            return
        self.live.discard(serial)
        self.in_use[name] -= 1
        if not self.in_use[name]:
            del self.in_use[name]
        if not reserved:
            self.unreserved_in_use -= 1


@pytest.mark.parametrize("seed", range(20))
def test_the_counter_accounts_as_the_model_does(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.choice([1, 3, 10, 30])
    names = ["f", "g", "h", "i"][: rng.randint(1, 4)]
    choices: list[int | None] = [None, None, 0, 1, 2, 5, limit, limit + 3]

    async def main() -> None:
        counter, model = LocalCounter(limit), ModelCounter(limit)
        held: list[Token] = []
        released: list[Token] = []
        for _ in range(2000):
            if held and rng.random() < 0.45:
                token = held.pop(rng.randrange(len(held)))
                await counter.release(token)
                model.release(token)
                released.append(token)
            elif released and rng.random() < 0.05:  # releasing twice changes nothing
                token = rng.choice(released)
                await counter.release(token)
                model.release(token)
            else:
                name, reserved = rng.choice(names), rng.choice(choices)
                try:
                    expected: tuple[str, int, bool] | str = model.acquire(name, reserved)
                except TooManyRequests as exc:
                    expected = exc.reason
                try:
                    token = await counter.acquire_nowait(name, reserved)
                except TooManyRequests as exc:
                    assert exc.reason == expected
                else:
                    assert (token.function_name, token.serial, token.reserved) == expected
                    held.append(token)
            stats = counter.statistics()
            assert (stats.limit, stats.unreserved_in_use, dict(stats.in_use)) == (
                model.limit, model.unreserved_in_use, dict(model.in_use))

    asyncio.run(main())


def test_a_token_is_an_immutable_value() -> None:
    token = Token("f", 7, True)
    assert (token.function_name, token.serial, token.reserved) == ("f", 7, True)
    assert token == Token(function_name="f", serial=7, reserved=True)
    assert hash(token) == hash(Token("f", 7, True))
    assert token != Token("f", 8, True)
    assert repr(token) == "Token(function_name='f', serial=7, reserved=True)"
    with pytest.raises(AttributeError):
        token.serial = 8  # type: ignore[misc]
