"""Stem cells: pre-started, not-yet-specialised sandboxes, one small pool per
(runtime, EphemeralStorage size, flavour), refilled in the background.

A stem cell is a normal sandbox of the worker's backend (isolated: same namespaces, uid, seccomp,
cgroup, read-only root) whose `/var/task` is a bind of an EMPTY per-cell host directory
(`<code cache>/.cells/<id>`, root-owned, 0755), whose environment is neutral (`NEUTRAL_ENV`:
values every function of the runtime has), and whose command is the runtime's stem
(`runtimes/python/stem.py`, `runtimes/nodejs/stem.mjs`): the interpreter has started and loaded
the runtime (and, for the Python `boto3` flavour, the platform's boto3), and waits on the
Runtime API's private `/firebox/specialize` long poll. The /tmp tmpfs size is fixed at spawn,
hence the pool key; the flavour is what the cell has loaded (the worker picks it per function).

`LocalWorker` specialises a cell for ONE function version (`local.py`): it links the function's
unpacked code into the cell's task directory, sets the cgroup memory limit to MemorySize, answers
the poll with the function's environment, then waits for init exactly as for a new sandbox. A
cell is taken once and never returned; one that dies while waiting is dropped and replaced. At
most `size(key)` cells per key exist unspecialised (memory, measured: a Python cell about 10 MB,
a boto3 one about 35 MB, a Node.js one about 50 MB: RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from firebox.runtimes.api import runtime_family
from firebox.worker.runtimeapi import RuntimeApiServer, RuntimeChannel, serve
from firebox.worker.sandbox_api import SandboxBackend, SandboxSpec

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0
# The limit while unspecialised; specialising sets MemorySize, a write saved when they are equal:
# Lambda's default, 128 MB, which every kind of cell fits in (a Node.js cell about 50 MB).
CELL_MEMORY_MB = 128
TAKE_WAIT_S = 0.25  # how long `take` waits for a cell already being started
SPAWNS_IN_FLIGHT = 2  # cells of one key being started at once


class CellKey(NamedTuple):
    runtime: str
    ephemeral_mb: int
    flavour: str = "plain"

    @property
    def kind(self) -> str:
        """`runtime/flavour`, how statistics name a kind of cell (`python3.11/boto3`)."""
        return f"{self.runtime}/{self.flavour}"


class StemCell:
    """One running, unspecialised sandbox and the Runtime API server it is polling."""

    def __init__(self, key: CellKey, spec: SandboxSpec, process: object, channel: RuntimeChannel,
                 server: RuntimeApiServer, exit_task: asyncio.Task[int]) -> None:
        self.key = key
        self.spec = spec
        self.process = process
        self.channel = channel
        self.server = server
        self.exit = exit_task

    @property
    def id(self) -> str:
        return self.spec.sandbox_id

    @property
    def task_dir(self) -> Path:
        return self.spec.code_dir

    @property
    def alive(self) -> bool:
        return not self.exit.done()

    async def discard(self) -> None:
        """Kill it and release everything (never specialised, or its specialisation failed
        before a Sandbox owned it)."""
        self.server.close()
        self.process.kill()  # type: ignore[attr-defined]
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self.exit), timeout=5)
        with contextlib.suppress(Exception):
            await self.process.cleanup()  # type: ignore[attr-defined]
        remove_task_dir(self.task_dir)


# Folders made in a cell's task directory when the cell is spawned, per runtime family, so that
# populating it at a cold start does not have to: `mkdir` is the dearest step of linking a small
# package (about 0.15 ms on ext4, against 0.01 ms per hard link), and the top level of every
# precompiled Python package has a `__pycache__`. `populate` removes one the package lacks.
PREMADE = {"python": ("__pycache__",)}


def premade_dirs(runtime: str) -> tuple[str, ...]:
    """The folders a cell of `runtime` has in its task directory before it is specialised."""
    return PREMADE.get(runtime_family(runtime), ())


def remove_task_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


_MKDIR, _LINK, _SYMLINK = 0, 1, 2


@dataclass(frozen=True)
class Population:
    """What `populate` does to fill a task directory from one unpacked package, worked out once
    (`plan_population`): (operation, path relative to the task directory, source path or link
    text), parents before their entries. Replaying it costs the links alone: for a hello
    package about a quarter of walking the tree each time (70 us against 280 us, measured)."""

    steps: tuple[tuple[int, str, str], ...]


def plan_population(code_dir: Path, max_entries: int | None = None) -> Population | None:
    """The `Population` of `code_dir`; None when it has more than `max_entries` files and
    folders (the walk stops there)."""
    code_dir = Path(code_dir)
    steps: list[tuple[int, str, str]] = []
    for root, dirs, files in os.walk(code_dir):
        relative = os.path.relpath(root, code_dir)
        for names, kind in ((dirs, _MKDIR), (files, _LINK)):
            for name in names:
                source = os.path.join(root, name)
                target = name if relative == "." else os.path.join(relative, name)
                if os.path.islink(source):
                    steps.append((_SYMLINK, target, os.readlink(source)))
                else:
                    steps.append((kind, target, source))
        if max_entries is not None and len(steps) > max_entries:
            return None
    return Population(tuple(steps))


def populate(code_dir: Path, task_dir: Path, plan: Population | None = None, premade: tuple[str, ...] = ()) -> None:
    """Make `task_dir` (empty but for the empty folders `premade`) hold the tree of `code_dir`
    (`plan`: its `Population`, worked out here when not given): hard links to the code cache's
    read-only, root-owned files where possible (same filesystem), else copies with the same
    modes. Directories 0755, owned by the platform: the sandbox's uid cannot change anything.
    A premade folder the package does not have is removed first."""
    if plan is None:
        plan = plan_population(code_dir)
        assert plan is not None
    base = str(task_dir)
    made = {relative for kind, relative, _ in plan.steps if kind == _MKDIR}
    for relative in premade:
        if relative not in made:
            os.rmdir(os.path.join(base, relative))
    for kind, relative, source in plan.steps:
        target = os.path.join(base, relative)
        if kind == _MKDIR and relative in premade:
            continue
        if kind == _LINK:
            try:
                os.link(source, target, follow_symlinks=False)
            except OSError:
                shutil.copy2(source, target)
                os.chmod(target, os.stat(source).st_mode & 0o755)
        elif kind == _MKDIR:
            os.mkdir(target, 0o755)
            os.chmod(target, 0o755)  # whatever the umask took away
        else:
            os.symlink(source, target)


@dataclass
class _Pool:
    key: CellKey
    ready: deque[StemCell] = field(default_factory=deque)
    starting: int = 0
    waiters: deque[asyncio.Future[StemCell]] = field(default_factory=deque)
    wanted: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    failures: int = 0  # spawns failed in a row
    retry_at: float = 0.0  # loop time before which no new spawn starts (after a failure)


_COUNTERS = ("spawned", "taken", "missed", "died", "failed")


class StemCellPool:
    """Pools of stem cells; `cell_spec(sandbox_id, key, task_dir)` builds a cell's SandboxSpec
    (the worker knows interpreters and binds); `size` is the number of cells kept per key, or a
    function of the key."""

    def __init__(self, backend: SandboxBackend, cells_dir: Path, size: int | Callable[[CellKey], int],
                 cell_spec: Callable[[str, CellKey, Path], SandboxSpec]) -> None:
        self._backend = backend
        self._dir = Path(cells_dir)
        self._size = size if callable(size) else (lambda _key, n=size: n)
        self._cell_spec = cell_spec
        self._pools: dict[CellKey, _Pool] = {}
        self._running = False
        self._discarding: set[asyncio.Task[None]] = set()
        self._stats = dict.fromkeys(_COUNTERS, 0)
        self._kinds: dict[str, dict[str, int]] = {}  # kind -> counters

    def size(self, key: CellKey) -> int:
        return self._size(key)

    def statistics(self) -> dict[str, object]:
        """Totals, and per kind of cell (`runtime/flavour`): counters and `ready`."""
        kinds = {kind: {**counts, "ready": 0} for kind, counts in self._kinds.items()}
        for pool in self._pools.values():
            kinds.setdefault(pool.key.kind, {**dict.fromkeys(_COUNTERS, 0), "ready": 0})["ready"] += len(pool.ready)
        ready = sum(len(p.ready) for p in self._pools.values())
        return {**self._stats, "ready": ready, "pools": len(self._pools), "kinds": kinds}

    def _count(self, key: CellKey, counter: str) -> None:
        self._stats[counter] += 1
        kind = self._kinds.setdefault(key.kind, dict.fromkeys(_COUNTERS, 0))
        kind[counter] += 1

    async def start(self, keys: list[CellKey]) -> None:
        if self._running:
            return
        if self._dir.exists():  # cells of a previous run (their sandboxes died with it)
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self._dir, 0o755)
        self._running = True
        for key in keys:
            self._ensure(key)

    def start_pool(self, key: CellKey) -> None:
        """Start keeping cells of `key` (a no-op when stopped or already kept)."""
        if self._running:
            self._ensure(key)

    async def stop(self) -> None:
        self._running = False
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            if pool.task is not None:
                pool.task.cancel()
        await asyncio.gather(*(p.task for p in pools if p.task is not None), return_exceptions=True)
        cells = [cell for pool in pools for cell in pool.ready]
        for pool in pools:
            pool.ready.clear()
            for waiter in pool.waiters:
                if not waiter.done():
                    waiter.cancel()
        await asyncio.gather(*(cell.discard() for cell in cells), return_exceptions=True)
        await asyncio.gather(*self._discarding, return_exceptions=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _ensure(self, key: CellKey) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(key)
            pool.task = asyncio.create_task(self._refill(pool), name=f"firebox-stem-cells-{'-'.join(map(str, key))}")
        return pool

    async def take(self, key: CellKey) -> StemCell | None:
        """A live cell of `key`, removed from the pool for good; or None (the caller starts a
        sandbox the usual way). Waits briefly for a cell already starting when no other caller
        waits for it."""
        if not self._running:
            return None
        pool = self._ensure(key)
        # No refill is started here: starting a sandbox blocks the event loop for a few ms
        # (fork + exec), which would land inside this cell's specialisation. The caller calls
        # `refill` once the cell's init is over.
        while pool.ready:
            cell = pool.ready.popleft()
            if cell.alive:
                self._count(key, "taken")
                return cell
            self._drop(cell)
        if pool.starting > len(pool.waiters):
            waiter: asyncio.Future[StemCell] = asyncio.get_running_loop().create_future()
            pool.waiters.append(waiter)
            try:
                cell = await asyncio.wait_for(asyncio.shield(waiter), TAKE_WAIT_S)
            except (TimeoutError, asyncio.CancelledError):
                if waiter.done() and not waiter.cancelled():
                    self._put(pool, waiter.result())  # arrived just too late: keep it
                else:
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    pool.waiters.remove(waiter)
            else:
                if cell.alive:
                    self._count(key, "taken")
                    return cell
                self._drop(cell)
        self._count(key, "missed")
        pool.wanted.set()  # nothing of ours to disturb: the caller starts a sandbox itself
        return None

    def refill(self, key: CellKey) -> None:
        """Top the pool of `key` up again, in the background."""
        pool = self._pools.get(key)
        if pool is not None:
            pool.wanted.set()

    def _put(self, pool: _Pool, cell: StemCell) -> None:
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                waiter.set_result(cell)
                return
        pool.ready.append(cell)

    def _drop(self, cell: StemCell) -> None:
        self._count(cell.key, "died")
        task = asyncio.create_task(cell.discard())
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    async def _refill(self, pool: _Pool) -> None:
        """Keep `size(key)` cells of the pool ready or starting, with at most `SPAWNS_IN_FLIGHT`
        starting at once: a spawn's fork + exec is short but blocks the loop, the wait for the
        stem to come up (Python ~50 ms, Node.js ~100 ms, boto3 ~300 ms on a quiet 2-core host)
        is long, and two of those overlap. After a failed spawn, no new one for a back-off of
        0.1 s x 2^failures (30 s at most)."""
        loop = asyncio.get_running_loop()
        spawning: set[asyncio.Task[None]] = set()
        try:
            while self._running:
                for cell in [c for c in pool.ready if not c.alive]:
                    pool.ready.remove(cell)
                    self._drop(cell)
                missing = self.size(pool.key) - len(pool.ready) - pool.starting
                wait = pool.retry_at - loop.time()
                if missing > 0 and pool.starting < SPAWNS_IN_FLIGHT and wait <= 0:
                    pool.starting += 1
                    task = asyncio.create_task(self._start_one(pool))
                    spawning.add(task)
                    task.add_done_callback(spawning.discard)
                    continue
                pool.wanted.clear()
                if missing > 0 and pool.starting < SPAWNS_IN_FLIGHT:  # backing off
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(pool.wanted.wait(), wait)
                else:
                    await pool.wanted.wait()
        finally:
            for task in spawning:
                task.cancel()
            await asyncio.gather(*spawning, return_exceptions=True)

    async def _start_one(self, pool: _Pool) -> None:
        """One spawn of the pool's refill: the cell joins the pool (or a waiting `take`)."""
        try:
            cell = await self._spawn(pool.key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed cell is logged and retried later
            self._count(pool.key, "failed")
            pool.failures += 1
            pool.retry_at = asyncio.get_running_loop().time() + min(30.0, 0.1 * 2 ** pool.failures)
            log.warning("stem cell for %s did not start: %s", pool.key, exc)
            return
        finally:
            pool.starting -= 1
            pool.wanted.set()
        pool.failures = 0
        if not self._running:
            await cell.discard()
            return
        cell.exit.add_done_callback(lambda _: pool.wanted.set())
        self._put(pool, cell)

    async def _spawn(self, key: CellKey) -> StemCell:
        sandbox_id = uuid.uuid4().hex
        task_dir = self._dir / sandbox_id
        task_dir.mkdir(mode=0o755)
        os.chmod(task_dir, 0o755)
        for relative in premade_dirs(key.runtime):
            os.mkdir(task_dir / relative, 0o755)
            os.chmod(task_dir / relative, 0o755)
        spec = self._cell_spec(sandbox_id, key, task_dir)
        spawning = asyncio.ensure_future(self._backend.spawn(spec))
        try:
            # Shielded: a spawn cancelled inside asyncio's create_subprocess_exec kills bwrap
            # only, the sandbox's own processes can outlive it holding the pipes, and asyncio
            # then waits for those pipes forever (seen as a hung `stop`). A stop lets the spawn
            # finish (tens of ms) and kills what it made.
            process = await asyncio.shield(spawning)
        except BaseException:
            if not spawning.done():
                with contextlib.suppress(BaseException):
                    made = await spawning
                    made.kill()
                    await asyncio.wait_for(made.wait(), 5)
                    await made.cleanup()
            remove_task_dir(task_dir)
            raise
        channel = RuntimeChannel(stem=True)
        assert channel.stem_waiting is not None
        exit_task = asyncio.ensure_future(process.wait())
        server: RuntimeApiServer | None = None
        try:
            server = await serve(channel, process.runtime_api, process.runtime_api_connection)
            done, _ = await asyncio.wait({channel.stem_waiting, exit_task}, timeout=READY_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if channel.stem_waiting not in done:
                detail = b""
                with contextlib.suppress(Exception):
                    detail = await asyncio.wait_for(process.stderr.read(4096), 0.5)
                raise RuntimeError(f"the stem never asked for its function: {detail.decode(errors='replace')[-300:]}")
        except BaseException:
            cell = StemCell(key, spec, process, channel, server or _NoServer(), exit_task)  # type: ignore[arg-type]
            await asyncio.shield(cell.discard())
            raise
        self._count(key, "spawned")
        return StemCell(key, spec, process, channel, server, exit_task)


class _NoServer:
    def close(self) -> None:
        pass
