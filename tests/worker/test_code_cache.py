"""The worker's code cache: one unpack per CodeSha256, precompiled, read-only, coalesced."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import sys
import zipfile
from pathlib import Path

import pytest

from firebox.errors import InvalidParameterValue
from firebox.settings import Limits
from firebox.store.blobs import LocalBlobStore
from firebox.worker.codecache import CodeCache

PYTHON = Path("/usr/bin/python3.11")
needs_python = pytest.mark.skipif(not PYTHON.exists(), reason=f"{PYTHON} is not installed")


def package(files: dict[str, tuple[str, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (text, mode) in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, text)
    return buffer.getvalue()


FILES = {
    "handler.py": ("import helper\ndef handler(event, context):\n    return helper.VALUE\n", 0o600),
    "helper.py": ("VALUE = 42\n", 0o644),
    "pkg/__init__.py": ("", 0o644),
    "pkg/broken.py": ("def oops(:\n", 0o644),  # the user's syntax error: not the cache's problem
    "bootstrap": ("#!/bin/sh\necho hi\n", 0o700),
}


def setup(tmp_path: Path, files=FILES) -> tuple[CodeCache, str]:
    blobs = LocalBlobStore(tmp_path / "blobs")
    ref = asyncio.run(blobs.put(package(files)))
    return CodeCache(tmp_path / "code", blobs, Limits()), ref.sha256_hex


def test_unpacks_once_and_publishes_a_read_only_tree(tmp_path: Path) -> None:
    cache, sha = setup(tmp_path)

    async def main() -> tuple[Path, Path]:
        return await cache.ensure(sha), await cache.ensure(sha)

    first, second = asyncio.run(main())
    assert first == second == tmp_path / "code" / sha
    assert cache.statistics()["unpacks"] == 1 and cache.statistics()["hits"] == 1
    assert (first / "helper.py").read_text() == "VALUE = 42\n"
    modes = {p.relative_to(first).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [first, *first.rglob("*")]}
    assert modes["."] == 0o755 and modes["pkg"] == 0o755
    assert modes["handler.py"] == 0o644 and modes["bootstrap"] == 0o755
    assert not [p for p in (tmp_path / "code").iterdir() if p.name.startswith(".staging-")]
    # a new cache on the same root (a restart) finds it
    again = CodeCache(tmp_path / "code", cache._blobs, Limits())
    assert asyncio.run(again.ensure(sha)) == first and again.statistics()["unpacks"] == 0


@needs_python
def test_precompiles_with_the_sandbox_interpreter(tmp_path: Path) -> None:
    cache, sha = setup(tmp_path)
    tree = asyncio.run(cache.ensure(sha, python=PYTHON))
    pycs = sorted(p.name for p in tree.rglob("*.pyc"))
    assert "handler.cpython-311.pyc" in pycs and "helper.cpython-311.pyc" in pycs
    assert not any(name.startswith("broken.") for name in pycs)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in tree.rglob("*.pyc"))
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in tree.rglob("__pycache__"))
    # tracebacks name the sandbox path, not the host's staging directory
    assert b"/var/task/helper.py" in next(tree.rglob("helper.cpython-311.pyc")).read_bytes()
    stats = cache.statistics()
    assert stats["unpacks"] == 1 and stats["compiles"] == 1
    # the same interpreter again: a hit; another interpreter path: compiled in place, once
    asyncio.run(cache.ensure(sha, python=PYTHON))
    assert cache.statistics()["compiles"] == 1
    other = Path(sys.executable)
    asyncio.run(cache.ensure(sha, python=other))
    asyncio.run(cache.ensure(sha, python=other))
    assert cache.statistics()["compiles"] == 2 and cache.statistics()["unpacks"] == 1


@needs_python
def test_concurrent_ensure_calls_share_one_unpack(tmp_path: Path) -> None:
    cache, sha = setup(tmp_path)

    async def main() -> list[Path]:
        return await asyncio.gather(*(cache.ensure(sha, python=PYTHON) for _ in range(8)))

    paths = asyncio.run(main())
    assert len(set(paths)) == 1
    stats = cache.statistics()
    assert stats["unpacks"] == 1 and stats["compiles"] == 1 and stats["hits"] == 7


def test_missing_bad_and_hostile_packages(tmp_path: Path) -> None:
    cache, _ = setup(tmp_path)
    with pytest.raises(KeyError):
        asyncio.run(cache.ensure("0" * 64))
    with pytest.raises(ValueError):
        asyncio.run(cache.ensure("../../etc"))
    evil_blobs = cache._blobs
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../escape.py", "x = 1\n")
    ref = asyncio.run(evil_blobs.put(buffer.getvalue()))
    with pytest.raises(InvalidParameterValue):
        asyncio.run(cache.ensure(ref.sha256_hex))
    assert not (tmp_path / "code" / ref.sha256_hex).exists()
    assert not (tmp_path / "escape.py").exists()
    assert not [p for p in (tmp_path / "code").iterdir() if p.name.startswith(".staging-")]
    assert cache.statistics()["failures"] >= 2
    assert os.stat(tmp_path / "code").st_mode & 0o005 == 0o005
