"""LocalBlobStore: content addressing, idempotence, exact bytes, name validation."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import pytest

from firebox.store.api import BlobRef
from firebox.store.blobs import LocalBlobStore


def test_put_get_exact_bytes_layout_and_mode(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    sha = hashlib.sha256(data).hexdigest()
    store = LocalBlobStore(tmp_path / "blobs")

    async def main() -> None:
        assert await store.put(data) == BlobRef(sha, len(data))
        assert await store.get(sha) == data
        assert await store.exists(sha)

    asyncio.run(main())
    path = tmp_path / "blobs" / sha[:2] / sha
    assert store.local_path(sha) == path
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == [sha]  # no temporary file left behind


def test_put_is_idempotent(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)

    async def main() -> None:
        first = await store.put(b"same bytes")
        mtime = store.local_path(first.sha256_hex).stat().st_mtime_ns
        refs = await asyncio.gather(*(store.put(b"same bytes") for _ in range(10)))
        assert set(refs) == {first}
        assert store.local_path(first.sha256_hex).stat().st_mtime_ns == mtime  # not rewritten

    asyncio.run(main())
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1


def test_empty_blob(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)

    async def main() -> None:
        ref = await store.put(b"")
        assert ref == BlobRef(hashlib.sha256(b"").hexdigest(), 0)
        assert await store.get(ref.sha256_hex) == b""

    asyncio.run(main())


def test_absent_blob(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "never-created")
    sha = hashlib.sha256(b"nothing").hexdigest()

    async def main() -> None:
        with pytest.raises(KeyError):
            await store.get(sha)
        assert not await store.exists(sha)
        assert await store.delete(sha) is False

    asyncio.run(main())


def test_delete(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)

    async def main() -> None:
        ref = await store.put(b"gone soon")
        assert await store.delete(ref.sha256_hex) is True
        assert not await store.exists(ref.sha256_hex)
        with pytest.raises(KeyError):
            await store.get(ref.sha256_hex)
        assert await store.put(b"gone soon") == ref  # can be stored again
        assert await store.get(ref.sha256_hex) == b"gone soon"

    asyncio.run(main())


BAD_NAMES = [
    "",
    "abc",
    "A" * 64,  # uppercase
    "g" * 64,
    "0" * 63,
    "0" * 65,
    "0" * 64 + "\n",
    "../" + "0" * 61,
    "/etc/passwd",
    "0" * 62 + "/.",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_sha_is_rejected(tmp_path: Path, name: str) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(ValueError):
        store.local_path(name)

    async def main() -> None:
        with pytest.raises(ValueError):
            await store.get(name)
        with pytest.raises(ValueError):
            await store.exists(name)
        with pytest.raises(ValueError):
            await store.delete(name)

    asyncio.run(main())
