"""The store's buffer (logs/store.py `append_lines`): segments, record and byte counts, drops and
their notices, checked against the plain version of `append_lines` (every step through `_push`)
over many random appends, takes and streams, with bounds small enough to drop often. No writer
runs: the test takes the batches itself."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from firebox.logs.store import SqliteLogStore, _notice


class ModelStore(SqliteLogStore):
    """append_lines written the plain way."""

    def append_lines(self, group: str, stream: str, timestamp_ms: int, messages: Sequence[str], *,
                     platform: bool = False) -> None:
        if not messages:
            return
        key = (group, stream)
        use = self._stream_use.get(key)
        if use is None:
            use = self._stream_use[key] = [0, 0]
        size = sum(map(len, messages))
        accepted = len(messages) if platform else self._room(key, use, messages, size)
        if accepted < len(messages):
            kept = sum(map(len, messages[:accepted]))
            lost = self._dropped.setdefault(key, [0, 0, timestamp_ms])
            lost[0] += len(messages) - accepted
            lost[1] += size - kept
            lost[2] = timestamp_ms
            self._dropped_total += len(messages) - accepted
            self._dropped_bytes += size - kept
            messages, size = messages[:accepted], kept
        if not messages:
            return
        gap = self._dropped.pop(key, None) if self._dropped else None
        if gap is not None:
            self._push(group, stream, gap[2], [_notice(gap[0], gap[1])], 0, use)
        self._push(group, stream, timestamp_ms, messages, size, use)
        self._wake.set()
        if self._buffered >= self._hurry_records or self._buffered_bytes >= self._hurry_bytes:
            self._hurry.set()


def _state(store: SqliteLogStore) -> object:
    return (list(store._segments), store.statistics(), store._stream_use, store._dropped, store._pushed,
            store._wake.is_set(), store._hurry.is_set())


@pytest.mark.parametrize("seed", range(12))
def test_the_buffer_accounts_as_the_plain_version_does(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    bounds = {"max_records": rng.choice([8, 20, 60]), "max_bytes": rng.choice([200, 1000, 10**6]),
              "batch_records": rng.choice([4, 10, 1000])}
    store, model = SqliteLogStore(tmp_path / "a.db", **bounds), ModelStore(tmp_path / "b.db", **bounds)
    keys = [("g1", "s1"), ("g1", "s2"), ("g2", "s1")]
    for step in range(3000):
        if rng.random() < 0.08:
            assert store._take_batch() == model._take_batch()
        elif rng.random() < 0.05:
            store._wake.clear(), model._wake.clear(), store._hurry.clear(), model._hurry.clear()
        else:
            group, stream = rng.choice(keys)
            messages = [f"{step}:{'x' * rng.randint(0, 40)}\n" for _ in range(rng.choice([0, 1, 1, 2, 3, 7]))]
            if rng.random() < 0.3:
                messages = tuple(messages)  # type: ignore[assignment]
            platform = rng.random() < 0.3
            store.append_lines(group, stream, step, messages, platform=platform)
            model.append_lines(group, stream, step, messages, platform=platform)
        assert _state(store) == _state(model)
    assert store.statistics().dropped > 0  # the bounds were reached
