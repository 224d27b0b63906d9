"""firebox.gcpauses: collections are counted per generation with their pauses, once installed
(idempotent). The running server's side is in tests/e2e/test_gcpauses.py."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from firebox import gcpauses


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> Iterator[gcpauses._Pauses]:
    fresh = gcpauses._Pauses()
    monkeypatch.setattr(gcpauses, "_pauses", fresh)
    yield fresh
    while fresh.on_gc in gc.callbacks:
        gc.callbacks.remove(fresh.on_gc)


def test_collections_are_counted_per_generation_with_their_longest_pause(pauses: gcpauses._Pauses) -> None:
    gcpauses.install()
    gcpauses.install()
    assert gc.callbacks.count(pauses.on_gc) == 1
    before = gcpauses.statistics()["generations"]
    gc.collect(2)
    gc.collect(2)
    after = gcpauses.statistics()
    assert after["installed"]
    full = after["generations"]["2"]
    assert full["collections"] - before["2"]["collections"] == 2
    assert 0 < full["max_ms"] <= full["total_ms"]


def test_nothing_is_counted_before_install(pauses: gcpauses._Pauses) -> None:
    gc.collect(2)
    stats = gcpauses.statistics()
    assert not stats["installed"]
    assert all(row["collections"] == 0 for row in stats["generations"].values())



def test_the_frozen_objects_are_counted_once_when_frozen(pauses: gcpauses._Pauses,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting them walks the whole permanent generation (milliseconds): not on every GET
    /_firebox/stats."""
    counted = []
    monkeypatch.setattr(gc, "freeze", lambda: None)
    monkeypatch.setattr(gc, "get_freeze_count", lambda: counted.append(1) or 1234)
    gcpauses.freeze_startup_objects()
    for _ in range(3):
        assert gcpauses.statistics()["frozen_objects"] == 1234
    assert len(counted) == 1
