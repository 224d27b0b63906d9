"""The only module that knows concrete classes: it builds the single-process platform.

Reading this file tells you what runs: which store, which blob store, which components, and
what each is handed. Cluster roles (PostgreSQL, Redis) will be built here too, from settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from firebox.arns import Scope
from firebox.control.registry import Registry
from firebox.frontend.api import Services
from firebox.frontend.app import FrontendApp
from firebox.settings import Settings
from firebox.store.blobs import LocalBlobStore
from firebox.store.sqlite import SqliteMetadataStore
from firebox.worker import host
from firebox.worker.api import HostRuntimes


@dataclass
class Platform:
    settings: Settings
    runtimes: HostRuntimes
    store: SqliteMetadataStore
    registry: Registry
    app: FrontendApp

    async def start(self) -> None:
        await self.registry.start()

    async def stop(self) -> None:
        """Stop in reverse order of start; idempotent."""
        await self.registry.stop()
        await self.store.close()


async def build_platform(settings: Settings) -> Platform:
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteMetadataStore(data_dir / "firebox.db")
    await store.open()
    blobs = LocalBlobStore(data_dir / "blobs")
    runtimes = host.probe()
    scope = Scope(account_id=settings.account_id, region=settings.region)
    registry = Registry(
        store,
        blobs,
        scope,
        settings.limits,
        runtimes=runtimes.names,
        architecture=runtimes.architecture,
        activation_delay_s=settings.activation_delay_s,
    )
    services = Services(registry=registry, scope=scope, limits=settings.limits)
    app = FrontendApp(services, max_request_bytes=settings.limits.max_request_bytes)
    return Platform(settings=settings, runtimes=runtimes, store=store, registry=registry, app=app)
