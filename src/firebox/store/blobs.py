"""The local `BlobStore`: content-addressed files under one directory.

Layout: `<root>/<first 2 hex digits>/<64 hex digits of SHA-256>`, mode 0o644. The two-digit
fan-out keeps directories small (256 of them) however many code packages there are.

Write protocol (what makes `put` crash-safe): write to a temporary file in the blob's own
directory, fsync it, `os.replace` it onto its name, fsync the directory. A name therefore only
ever denotes complete, durable content, so `put` may skip the write when the name exists.

Every file operation runs on a worker thread (`asyncio.to_thread`): a 50 MB code package must
not stall the event loop. OS errors other than "absent" become `StoreError`.

Known caveats
-------------
- A crash between `mkstemp` and `os.replace` leaves a `.tmp-*` file in a fan-out directory.
  It is never visible as a blob; nothing sweeps it yet.
- `get` does not re-hash what it reads: the store trusts its own disk.
- `delete` does not fsync the directory: a blob that reappears after a power cut is harmless
  garbage (its content is still correct for its name).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path

from firebox.errors import StoreError
from firebox.store.api import BlobRef

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_FILE_MODE = 0o644


def check_sha256_hex(sha256_hex: str) -> str:
    """`sha256_hex` itself when it is 64 lowercase hex digits; ValueError otherwise.

    The name becomes a path, so this is what keeps a caller from naming a file outside the root.
    """
    if not isinstance(sha256_hex, str) or not _SHA256_HEX.fullmatch(sha256_hex):
        raise ValueError(f"not a lowercase hex SHA-256: {sha256_hex!r}")
    return sha256_hex


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    """`BlobStore` over a directory of this host (created on first `put`)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        return self._root

    def local_path(self, sha256_hex: str) -> Path:
        check_sha256_hex(sha256_hex)
        return self._root / sha256_hex[:2] / sha256_hex

    async def put(self, data: bytes) -> BlobRef:
        return await asyncio.to_thread(self._put_sync, data)

    async def get(self, sha256_hex: str) -> bytes:
        path = self.local_path(sha256_hex)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise KeyError(sha256_hex) from None
        except OSError as exc:
            raise StoreError(f"cannot read blob {sha256_hex}: {exc}") from exc

    async def exists(self, sha256_hex: str) -> bool:
        return await asyncio.to_thread(self.local_path(sha256_hex).is_file)

    async def delete(self, sha256_hex: str) -> bool:
        path = self.local_path(sha256_hex)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot delete blob {sha256_hex}: {exc}") from exc
        return True

    def _put_sync(self, data: bytes) -> BlobRef:
        ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
        path = self.local_path(ref.sha256_hex)
        try:
            if not path.exists():
                self._write(path, data)
        except OSError as exc:
            raise StoreError(f"cannot store blob {ref.sha256_hex}: {exc}") from exc
        return ref

    def _write(self, path: Path, data: bytes) -> None:
        directory = path.parent
        if not directory.is_dir():
            self._root.mkdir(parents=True, exist_ok=True)
            directory.mkdir(exist_ok=True)
            # The new directory's own name must be durable too, or the blob can vanish with it.
            _fsync_dir(self._root)
        # Two concurrent puts of the same content each write their own temporary file; the
        # second replace swaps in identical bytes, which is harmless.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fchmod(file.fileno(), _FILE_MODE)  # mkstemp creates 0o600
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)
