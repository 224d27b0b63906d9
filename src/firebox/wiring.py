"""The only module that knows concrete classes: it builds the single-process platform.

Reading this file tells you what runs: which store, which blob store, which components, and
what each is handed. Cluster roles (PostgreSQL, Redis) will be built here too, from settings.
Start order is the order of `Platform.parts`; stop is the reverse.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from firebox import gcpauses, hops
from firebox.arns import Scope
from firebox.asyncinvoke.destinations import Targets
from firebox.asyncinvoke.dispatcher import DispatchSettings, Dispatcher
from firebox.asyncinvoke.queue import StoreEventQueue
from firebox.asyncinvoke.service import AsyncInvokeService
from firebox.control.api import FunctionVersion
from firebox.control.registry import Registry
from firebox.counter.local import LocalCounter
from firebox.frontend.api import Services
from firebox.frontend.app import FrontendApp
from firebox.invoker.invoker import LocalInvoker
from firebox.logs.store import SqliteLogStore
from firebox.settings import Settings
from firebox.store.blobs import LocalBlobStore
from firebox.store.sqlite import SqliteMetadataStore
from firebox.worker import host
from firebox.worker.api import HostRuntimes
from firebox.worker.backends import choose_backend
from firebox.worker.codecache import CodeCache
from firebox.worker.local import LocalWorker
from firebox.worker.sandbox_api import SandboxBackend
from firebox.workers.keepalive import FixedKeepAlive, HybridHistogramPolicy, KeepAlivePolicy
from firebox.workers.manager import LocalWorkerManager

log = logging.getLogger("firebox")


@dataclass
class Platform:
    settings: Settings
    runtimes: HostRuntimes
    store: SqliteMetadataStore
    logs: SqliteLogStore
    registry: Registry
    backend: SandboxBackend
    worker: LocalWorker
    workers: LocalWorkerManager
    events: AsyncInvokeService
    app: FrontendApp

    async def start(self) -> None:
        await self.logs.start()
        await self.registry.start()
        await self.worker.start()
        await self.workers.start()
        await self.events.start()

    async def stop(self) -> None:
        """Stop in reverse order of start; idempotent."""
        await self.events.stop()
        await self.workers.stop()
        await self.worker.stop()
        await self.backend.close()
        await self.registry.stop()
        await self.logs.stop()
        await self.store.close()


def default_python_libs() -> Path | None:
    candidate = Path(sys.prefix) / "firebox-lambda-python"
    return candidate if candidate.is_dir() else None


async def build_platform(settings: Settings) -> Platform:
    # Absolute: sandboxes bind host paths under it (code, stem cells), and bind sources must be
    # absolute; the default `.firebox` is relative to where the server was started.
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteMetadataStore(data_dir / "firebox.db")
    await store.open()
    blobs = LocalBlobStore(data_dir / "blobs")
    logs = SqliteLogStore(data_dir / "logs.db", sweep_interval_s=settings.log_sweep_interval_s,
                          linger_s=settings.log_linger_s)
    runtimes = host.probe()
    scope = Scope(account_id=settings.account_id, region=settings.region)

    # choose_backend logs its choice and why (a warning when it falls back to no isolation).
    backend = choose_backend(None if settings.sandbox_backend == "auto" else settings.sandbox_backend)
    code_cache = CodeCache(data_dir / "code", blobs, settings.limits)
    worker = LocalWorker(backend, code_cache, logs, runtimes, python_libs=settings.python_libs or default_python_libs(),
                         stem_cells=settings.stem_cells, region=settings.region)
    if settings.keep_alive_policy == "hybrid":
        policy: KeepAlivePolicy = HybridHistogramPolicy(fallback_keep_alive_s=settings.keep_alive_s)
    else:
        policy = FixedKeepAlive(settings.keep_alive_s)
    workers = LocalWorkerManager(worker, keep_alive_s=settings.keep_alive_s, policy=policy,
                                 max_lifetime_s=settings.max_sandbox_lifetime_s)

    async def prepare_code(version: FunctionVersion) -> None:
        await worker.prepare_code(version.runtime, version.code_sha256_hex)

    registry = Registry(
        store,
        blobs,
        scope,
        settings.limits,
        runtimes=runtimes.names,
        architecture=runtimes.architecture,
        prepare_steps=(prepare_code,),
        activation_delay_s=settings.activation_delay_s,
        on_change=workers.retire_function,
    )
    counter = LocalCounter(settings.limits.account_concurrency)
    invoker = LocalInvoker(registry, counter, workers, scope)

    # Quiet: no caller waits on an invocation (queued events may run: nobody waits on them);
    # then a lone enqueue's fsync may hold the event loop (see asyncinvoke/queue.py).
    queue = StoreEventQueue(store, quiet=lambda: not invoker.callers_waiting)
    events = AsyncInvokeService(queue, registry)
    dispatch = DispatchSettings(
        retry_base_s=settings.async_retry_base_s,
        concurrency=settings.async_concurrency,
        per_function=settings.async_per_function,
    )
    events.attach(Dispatcher(queue, invoker, registry, Targets(scope, events.accept), scope, dispatch,
                             logs_written=logs.written))

    if settings.trace_hops:
        hops.enable()

    def statistics() -> dict[str, object]:
        return {
            "workers": dataclasses.asdict(workers.statistics()),
            "worker": dataclasses.asdict(worker.statistics()),
            "stem_cells": worker.stem_statistics(),
            "code_cache": code_cache.statistics(),
            "backend": backend.statistics(),
            "gc": gcpauses.statistics(),
        }

    services = Services(registry=registry, invoker=invoker, events=events, logs=logs, scope=scope,
                        limits=settings.limits, statistics=statistics)
    app = FrontendApp(services, max_request_bytes=settings.limits.max_request_bytes)
    return Platform(settings, runtimes, store, logs, registry, backend, worker, workers, events, app)
