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


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    import os

    request_id()  # the parent has a pool of random bits now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write_end, " ".join(request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = set(os.read(read_end, 4096).decode().split())
    os.close(read_end)
    assert len(child) == 3 and not child & {request_id() for _ in range(3)}
