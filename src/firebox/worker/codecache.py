"""The worker's code cache: each code package (CodeSha256) unpacked once, shared read-only by
every sandbox of the versions that use it.

`CodeCache.ensure(sha256_hex, python=...)` returns `root/<hex>`. Its first caller is
normally the registry's preparation (`LocalWorker.prepare_code`, while the function is
Pending), so the invoke path meets case 1; it is the invoke path's own fallback otherwise:

1. a hit when `root/<hex>` exists (published trees are complete by construction);
2. otherwise, once per hash however many callers ask at the same time (one asyncio future per
   hash), on a worker thread: `codezip.safe_extract` of the blob's local file into
   `root/.staging-<random>/<hex>`; then, when `python` is given, `python -I -m compileall -q -j 0
   -d /var/task <tree>` with THAT interpreter (the sandbox's interpreter must match the .pyc
   magic number; precompiling saved 160-180 ms of cold start for a requests-sized package,
   because the sandbox cannot write /var/task and would recompile on every cold start);
   compile failures are ignored (the runtime reports the user's syntax errors itself); then the
   tree is normalised (directories 0755, files 0644, or 0755 when executable, owned by the
   platform) and renamed onto `root/<hex>`. A half-done unpack therefore never appears under
   the final name; a crash leaves only a `.staging-*` directory, swept by the next start.
3. A hit by a caller with a `python` the tree was not compiled for (two runtimes sharing one
   zip) compiles in place, once per (hash, interpreter): .pyc names carry the interpreter's tag
   (`cpython-311`), and compileall writes each file atomically, so readers never see a partial
   .pyc. A marker `root/.compiled/<hex>.<tag>` remembers it across restarts.

`root` itself is made 0755, and its ancestors must be traversable by others: sandboxes run
under unprivileged per-sandbox uids and bubblewrap binds `root/<hex>` as that uid.

`CodeCache.traits(sha256_hex)` describes an unpacked package for the worker's choice of stem
cell (`PackageTraits`), computed once per hash on a worker thread and kept in memory: the
importable names at its top level, the names of every directory and module at any depth, whether
it holds archives a function could put on sys.path (.zip, .egg, .whl, .pth), and the top-level
modules its own Python files import (a regex on source lines, `import x`, `from x import`,
`import_module("x")`). Bounded: the name walk stops after `TRAITS_MAX_ENTRIES` entries, the
import scan after `TRAITS_MAX_FILES` files or `TRAITS_MAX_BYTES`, skipping `__pycache__`,
`*.dist-info` / `*.egg-info` and the top-level folders that a `*.dist-info/RECORD` says were
installed by pip (dependencies, not the function's own code); `complete` says whether the name
walk saw everything.

Not here yet: eviction of packages no version uses any more (`remove`, for the retirement code).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from firebox.codezip import safe_extract
from firebox.settings import Limits
from firebox.store.api import BlobStore
from firebox.worker.subprocesses import sigkill

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_STAGING_PREFIX = ".staging-"
_COMPILE_TIMEOUT_S = 300.0
TRAITS_MAX_ENTRIES = 20_000
TRAITS_MAX_FILES = 300
TRAITS_MAX_BYTES = 4 * 1024 * 1024
_ARCHIVE_SUFFIXES = (".zip", ".egg", ".whl", ".pth")
_SKIPPED_DIRS = ("__pycache__", "node_modules", ".git")
_IMPORT_LINE = re.compile(
    rb"^[ \t]*(?:from[ \t]+([A-Za-z_]\w*)|import[ \t]+([A-Za-z_][\w.]*(?:[ \t]+as[ \t]+\w+)?"
    rb"(?:[ \t]*,[ \t]*[A-Za-z_][\w.]*(?:[ \t]+as[ \t]+\w+)?)*))",
    re.MULTILINE,
)
_DYNAMIC_IMPORT = re.compile(rb"""(?:import_module|__import__)\(\s*['"]([A-Za-z_]\w*)""")


@dataclass(frozen=True)
class PackageTraits:
    """What an unpacked package holds, as far as choosing a stem cell goes (see `traits`)."""

    top_level: frozenset[str]  # importable names at the root: `x` for x.py, x.pyc, x.*.so, x/
    names: frozenset[str]  # the same, at every depth
    archives: bool  # a .zip / .egg / .whl / .pth anywhere: sys.path could grow at run time
    imports: frozenset[str]  # top-level modules imported by the scanned .py files
    complete: bool  # False: the name walk hit its bound (names may be missing)


class CodeCache:
    def __init__(self, root: Path, blobs: BlobStore, limits: Limits) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._markers = self.root / ".compiled"
        self._markers.mkdir(mode=0o700, exist_ok=True)
        self._root_text, self._markers_text = str(self.root), str(self._markers)
        self._blobs = blobs
        self._limits = limits
        self._pending: dict[tuple[str, str | None], asyncio.Future[Path]] = {}
        self._traits: dict[str, asyncio.Future[PackageTraits]] = {}
        self._stats = {"hits": 0, "unpacks": 0, "compiles": 0, "failures": 0}
        for stale in self.root.glob(_STAGING_PREFIX + "*"):  # left by a crash
            shutil.rmtree(stale, ignore_errors=True)

    def path(self, sha256_hex: str) -> Path:
        if not isinstance(sha256_hex, str) or not _SHA256_HEX.fullmatch(sha256_hex):
            raise ValueError(f"not a lowercase hex SHA-256: {sha256_hex!r}")
        return self.root / sha256_hex

    async def ensure(self, sha256_hex: str, *, python: Path | None = None) -> Path:
        """The unpacked (and, given `python`, precompiled) tree of package `sha256_hex`.
        Raises KeyError when the blob store has no such package, InvalidParameterValue when the
        package fails the zip checks, OSError on the host's own failures."""
        final = self.path(sha256_hex)
        tag = _python_key(python)
        key = (sha256_hex, tag)
        # The hit is on every cold start: two stat calls on plain strings, no Path objects.
        if os.path.isdir(f"{self._root_text}/{sha256_hex}") and (
                python is None or os.path.exists(f"{self._markers_text}/{sha256_hex}.{tag}")):
            self._stats["hits"] += 1
            return final
        future = self._pending.get(key)
        if future is None:
            future = asyncio.ensure_future(self._produce(sha256_hex, python, tag))
            self._pending[key] = future
            future.add_done_callback(lambda _f: self._pending.pop(key, None))
        else:
            self._stats["hits"] += 1
        return await asyncio.shield(future)

    def _marker(self, sha256_hex: str, tag: str | None) -> Path:
        return self._markers / f"{sha256_hex}.{tag}"

    async def _produce(self, sha256_hex: str, python: Path | None, tag: str | None) -> Path:
        final = self.path(sha256_hex)
        try:
            if not final.is_dir():
                # The unpack (and, if asked, its compile) of a hash happens once even when
                # callers with different interpreters race: the first one unpacks.
                unpack_key = (sha256_hex, "unpack")
                future = self._pending.get(unpack_key)
                if future is None:
                    future = asyncio.ensure_future(self._unpack(sha256_hex, python, tag))
                    self._pending[unpack_key] = future
                    future.add_done_callback(lambda _f: self._pending.pop(unpack_key, None))
                compiled_with = await asyncio.shield(future)
                if compiled_with == tag:
                    return final
            if python is not None and not self._marker(sha256_hex, tag).exists():
                await compile_package(python, final)
                self._stats["compiles"] += 1
                self._marker(sha256_hex, tag).touch()
                await asyncio.to_thread(normalise_modes, final)
            else:
                self._stats["hits"] += 1
            return final
        except BaseException:
            self._stats["failures"] += 1
            raise

    async def _unpack(self, sha256_hex: str, python: Path | None, tag: str | None) -> str | None:
        """Unpack (and compile with `python`) into staging, then publish; returns the tag the
        tree was compiled for (None: not compiled)."""
        source = self._blobs.local_path(sha256_hex)
        if not await self._blobs.exists(sha256_hex):
            raise KeyError(sha256_hex)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))
        try:
            tree = staging / sha256_hex
            await asyncio.to_thread(
                safe_extract, source, tree,
                max_unzipped_bytes=self._limits.max_unzipped_bytes, max_entries=self._limits.max_zip_entries,
            )
            self._stats["unpacks"] += 1
            if python is not None:
                await compile_package(python, tree)
                self._stats["compiles"] += 1
            await asyncio.to_thread(normalise_modes, tree)
            final = self.path(sha256_hex)
            try:
                os.rename(tree, final)
            except OSError:
                if not final.is_dir():  # another process published it first: that is a hit
                    raise
                return None
            if python is not None:
                self._marker(sha256_hex, tag).touch()
            return tag
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def statistics(self) -> dict[str, int]:
        return dict(self._stats)

    async def traits(self, sha256_hex: str) -> PackageTraits:
        """The traits of package `sha256_hex`, which `ensure` has unpacked; once per hash."""
        future = self._traits.get(sha256_hex)
        if future is None:
            future = self._traits[sha256_hex] = asyncio.ensure_future(
                asyncio.to_thread(describe_package, self.path(sha256_hex)))
        try:
            return await asyncio.shield(future)
        except BaseException:
            if future.done():
                self._traits.pop(sha256_hex, None)  # a failed scan is tried again next time
            raise


def _module_name(name: str, is_dir: bool) -> str | None:
    if is_dir:
        return name if name.isidentifier() else None
    for suffix in (".py", ".pyc", ".so"):
        if name.endswith(suffix):
            stem = name.split(".", 1)[0]
            return stem if stem.isidentifier() else None
    return None


def _installed_top_levels(root: Path) -> set[str]:
    """Top-level folders that pip installed (first path parts listed in `*.dist-info/RECORD`)."""
    found: set[str] = set()
    for record in root.glob("*.dist-info/RECORD"):
        try:
            with open(record, "rb") as f:
                text = f.read(1024 * 1024)
        except OSError:
            continue
        for line in text.splitlines():
            first = line.split(b",", 1)[0].split(b"/", 1)
            if len(first) == 2 and first[0] and not first[0].startswith(b"."):
                found.add(first[0].decode("utf-8", "replace"))
    return found


def describe_package(root: Path) -> PackageTraits:
    """`PackageTraits` of the tree at `root` (bounded; see the module docstring)."""
    root = Path(root)
    installed = _installed_top_levels(root)
    top_level: set[str] = set()
    names: set[str] = set()
    sources: list[tuple[int, str]] = []  # (depth, path): the function's own first
    archives, complete, entries = False, True, 0
    for directory, subdirs, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        depth = 0 if relative == "." else relative.count(os.sep) + 1
        vendored = depth > 0 and relative.split(os.sep, 1)[0] in installed
        subdirs[:] = [d for d in subdirs if d not in _SKIPPED_DIRS and not d.endswith((".dist-info", ".egg-info"))]
        entries += len(subdirs) + len(files)
        if entries > TRAITS_MAX_ENTRIES:
            complete = False
            break
        for name in subdirs:
            if (module := _module_name(name, True)) is not None:
                names.add(module)
                if depth == 0:
                    top_level.add(module)
        for name in files:
            archives = archives or name.endswith(_ARCHIVE_SUFFIXES)
            if (module := _module_name(name, False)) is not None:
                names.add(module)
                if depth == 0:
                    top_level.add(module)
            if name.endswith(".py") and not vendored:
                sources.append((depth, os.path.join(directory, name)))
    sources.sort(key=lambda item: item[0])
    imports: set[str] = set()
    budget = TRAITS_MAX_BYTES
    for _, path in sources[:TRAITS_MAX_FILES]:
        try:
            with open(path, "rb") as f:
                text = f.read(budget)
        except OSError:
            continue
        budget -= len(text)
        imports.update(_imported_modules(text))
        if budget <= 0:
            break
    return PackageTraits(frozenset(top_level), frozenset(names), archives, frozenset(imports), complete)


def _imported_modules(text: bytes) -> set[str]:
    found: set[str] = set()
    for match in _IMPORT_LINE.finditer(text):
        if match.group(1):
            found.add(match.group(1).decode())
        else:
            for part in match.group(2).split(b","):
                found.add(part.split()[0].split(b".", 1)[0].decode())
    found.update(m.decode() for m in _DYNAMIC_IMPORT.findall(text))
    return found


@functools.lru_cache(maxsize=64)
def _python_key(python: Path | None) -> str | None:
    """A marker-safe name for an interpreter path."""
    if python is None:
        return None
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(python).strip("/"))


async def compile_package(python: Path, tree: Path) -> None:
    """Precompile .py files with the sandbox's own interpreter; failures are the user's."""
    proc = await asyncio.create_subprocess_exec(
        str(python), "-I", "-m", "compileall", "-q", "-j", "0", "-d", "/var/task", str(tree),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd=str(tree),
    )
    try:
        await asyncio.wait_for(proc.wait(), _COMPILE_TIMEOUT_S)
    except asyncio.TimeoutError:
        sigkill(proc)
        await proc.wait()


def normalise_modes(tree: Path) -> None:
    """Directories 0755, files 0644 (0755 when any execute bit is set); symlinks untouched."""
    os.chmod(tree, 0o755)
    for directory, subdirs, files in os.walk(tree):
        for name in subdirs + files:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            if stat.S_ISDIR(mode):
                os.chmod(path, 0o755)
            else:
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)
