"""firebox.ids: request ids parse as version-4 UUIDs and do not repeat; trace ids have X-Ray's shape."""

from __future__ import annotations

import re
import uuid

from firebox.ids import request_id, trace_id


def test_request_ids_are_canonical_version_4_uuids() -> None:
    seen = set()
    for _ in range(2000):
        text = request_id()
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
        seen.add(text)
    assert len(seen) == 2000


def test_trace_id_shape() -> None:
    text = trace_id(now=0x6566_7768)
    assert re.fullmatch(r"Root=1-65667768-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=0", text), text
