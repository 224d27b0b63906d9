"""The running server froze what it made at start-up out of the garbage collector's reach, and
counts its collections (GET /_firebox/stats, `gc`)."""

from __future__ import annotations

import json
import urllib.request

from .helpers import FireboxServer


def test_the_server_froze_its_startup_objects_and_counts_its_collections(server: FireboxServer) -> None:
    with urllib.request.urlopen(f"{server.endpoint}/_firebox/stats", timeout=10) as answer:
        stats = json.loads(answer.read())["gc"]
    assert stats["installed"]
    # The Lambda service model alone is tens of thousands of objects; unfrozen, this is 0.
    assert stats["frozen_objects"] > 10_000
    assert set(stats["generations"]) == {"0", "1", "2"}
