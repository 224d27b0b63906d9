"""The `Registry` of `control/api.py` over a metadata store and a blob store.

Each method validates its command, stores a new code package first (content-addressed, so a
failure after this point leaves only an unreferenced blob, never a dangling reference), then runs
one unit of work in the store, then hands anything that needs preparing to the `Preparer`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TypeVar

from firebox import codezip
from firebox.arns import LATEST, FunctionRef, Scope
from firebox.control import account, aliases, eventconfig, functions, validation, versions
from firebox.control.api import (
    AccountSettings,
    Alias,
    EventInvokeConfig,
    CodeInput,
    CreateFunction,
    FunctionDetails,
    FunctionVersion,
    Page,
    UpdateCode,
    UpdateConfiguration,
)
from firebox.control.preparation import PrepareFailure, PrepareStep, Preparer
from firebox.errors import InvalidParameterValue, ResourceNotFound
from firebox.settings import Limits
from firebox.store.api import BlobStore, MetadataStore, Tx

T = TypeVar("T")

CACHE_ENTRIES = 10_000
_MISSING = object()  # a cache miss (None may be a cached value)


class Registry:
    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        scope: Scope,
        limits: Limits,
        *,
        runtimes: frozenset[str],
        architecture: str,
        prepare_steps: tuple[PrepareStep, ...] = (),
        activation_delay_s: float = 0.0,
        on_change: Callable[[str, str | None], None] | None = None,
    ) -> None:
        """`on_change(name, version)` is told after code or configuration of a version changed
        or it was deleted (version None: the whole function), so its sandboxes can retire."""
        self._store = store
        self._blobs = blobs
        self._scope = scope
        self._limits = limits
        self._runtimes = runtimes
        self._architecture = architecture
        self._on_change = on_change or (lambda name, version: None)
        self._cache: dict[str, dict[tuple[str, ...], object]] = {}  # function name -> its cached reads
        self._cached_entries = 0
        self._writes = 0  # bumped by every write: a read that overlapped one is not cached
        self._preparer = Preparer(
            blobs, limits, self._finish_preparation, steps=prepare_steps, delay_s=activation_delay_s
        )

    @property
    def scope(self) -> Scope:
        return self._scope

    @property
    def runtimes(self) -> frozenset[str]:
        return self._runtimes

    async def start(self) -> None:
        await self._preparer.start()
        for version in await self._store.read(lambda tx: functions.busy_functions(tx, self._scope)):
            self._preparer.submit(version)

    async def stop(self) -> None:
        await self._preparer.stop()

    def statistics(self) -> object:
        return self._preparer.statistics()

    async def _finish_preparation(self, name: str, revision_id: str, failure: PrepareFailure | None) -> bool:
        """Write the outcome; when it landed, the function's details as of that write go into the
        read cache (the first invoke after Active would otherwise pay a store read: ~1 ms)."""

        def work(tx: Tx) -> FunctionDetails | None:
            if not functions.finish_preparation(tx, self._scope, name, revision_id, failure):
                return None
            return functions.details(tx, self._scope, FunctionRef(name))

        details = await self._write(work, name)
        if details is not None:
            # The write's own result: a later write of this function forgets it, however its
            # continuation interleaves with this one (they resume in commit order).
            self._remember(name, ("details", name, ""), details)
        return details is not None

    async def _write(self, work: Callable[[Tx], T], name: str | None = None) -> T:
        """Run `work` as one unit of work. Every write names the function it changes (None:
        possibly any): cached reads of that function are forgotten, those of others kept (a
        write of one function changes no other's details or aliases)."""
        try:
            return await self._store.atomically(work)
        finally:
            self._writes += 1
            if name is None:
                self._cache.clear()
                self._cached_entries = 0
            else:
                self._cached_entries -= len(self._cache.pop(name, ()))

    def _remembered(self, name: str, key: tuple[str, ...]) -> object:
        """The cached value, or _MISSING."""
        entries = self._cache.get(name)
        return _MISSING if entries is None else entries.get(key, _MISSING)

    def _remember(self, name: str, key: tuple[str, ...], value: object) -> None:
        if self._cached_entries >= CACHE_ENTRIES:
            self._cache.clear()
            self._cached_entries = 0
        entries = self._cache.setdefault(name, {})
        self._cached_entries += key not in entries
        entries[key] = value

    async def _cached(self, name: str, key: tuple[str, ...], work: Callable[[Tx], T]) -> T:
        """A read of function `name` for the invoke path, served from memory until the next
        write of that function.

        Known caveat: valid while this process is the only writer (the single-machine
        topology). Cluster frontends will need the store to announce changes."""
        found = self._remembered(name, key)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        writes = self._writes
        value = await self._store.read(work)
        # Reads run on their own connection, beside writes: one that was in flight while any
        # write committed may have seen the state before it, and must not outlive that write.
        if writes == self._writes:
            self._remember(name, key, value)
        return value

    async def _read(self, work: Callable[[Tx], T]) -> T:
        return await self._store.read(work)

    # -- code packages -------------------------------------------------------------------------

    async def _store_code(self, code: CodeInput, *, dry_run: bool = False) -> tuple[str, int]:
        """Validate and store a package; returns (CodeSha256, CodeSize)."""
        if code.image_uri is not None:
            raise InvalidParameterValue("ImageUri is not supported by Firebox yet: deploy a .zip package.")
        if code.s3_bucket is not None or code.s3_key is not None or code.s3_object_version is not None:
            if code.zip_file is not None:
                raise InvalidParameterValue("Please do not provide other FunctionCode parameters when providing a ZipFile.")
            raise InvalidParameterValue(
                "Code.S3Bucket and Code.S3Key are not supported yet: Firebox has no object store yet. "
                "Upload the package inline with Code.ZipFile."
            )
        if code.zip_file is None:
            raise InvalidParameterValue("Please provide a source for function code.")
        info = await asyncio.to_thread(
            codezip.inspect_zip,
            code.zip_file,
            max_zip_bytes=self._limits.max_zip_bytes,
            max_unzipped_bytes=self._limits.max_unzipped_bytes,
            max_entries=self._limits.max_zip_entries,
        )
        if not dry_run:
            await self._blobs.put(code.zip_file)
        return info.sha256_b64, info.size

    async def code_blob(self, sha256_hex: str) -> bytes:
        try:
            return await self._blobs.get(sha256_hex)
        except (KeyError, ValueError) as exc:
            raise ResourceNotFound(f"No code package with SHA-256 {sha256_hex}") from exc

    # -- functions -----------------------------------------------------------------------------

    async def create_function(self, cmd: CreateFunction) -> FunctionVersion:
        validation.check_unsupported(cmd.unsupported + (("Layers",) if cmd.layers else ()))
        validation.check_package(cmd.package_type, cmd.runtime, cmd.handler)
        validation.check_runtime(cmd.runtime, self._runtimes)
        validation.check_limits(timeout=cmd.timeout, memory_size=cmd.memory_size)
        validation.check_environment(cmd.environment, self._limits.max_environment_bytes)
        validation.check_architectures(cmd.architectures, self._architecture)
        sha, size = await self._store_code(cmd.code)

        def work(tx: Tx) -> FunctionVersion:
            latest = functions.create(tx, self._scope, cmd, sha, size)
            if cmd.publish:
                return self._publish_now(tx, latest)
            return latest

        result = await self._write(work, cmd.name)
        await self._submit_latest(cmd.name)
        return result

    def _publish_now(self, tx: Tx, latest: FunctionVersion) -> FunctionVersion:
        """Publish=True on create/update: version the package that is being prepared now."""
        return versions.publish(
            tx, self._scope, FunctionRef(latest.name), code_sha256=None, description=None,
            revision_id=None, allow_busy=True,
        )

    async def _submit_latest(self, name: str) -> None:
        details = await self._read(lambda tx: functions.details(tx, self._scope, FunctionRef(name)))
        if details.config.busy:
            self._preparer.submit(details.config)

    async def get_function(self, ref: FunctionRef) -> FunctionDetails:
        key = ("details", ref.name, ref.qualifier or "")
        found = self._remembered(ref.name, key)
        if found is not _MISSING:  # every warm invoke: no closure, no inner coroutine
            return found  # type: ignore[return-value]
        return await self._cached(ref.name, key, lambda tx: functions.details(tx, self._scope, ref))

    async def get_configuration(self, ref: FunctionRef) -> tuple[FunctionVersion, str | None]:
        return await self._read(lambda tx: functions.resolve(tx, self._scope, ref))

    async def list_functions(self, *, all_versions: bool, marker: str | None, max_items: int) -> Page:
        return await self._read(
            lambda tx: functions.listing(tx, self._scope, all_versions=all_versions, marker=marker, max_items=max_items)
        )

    async def update_code(self, cmd: UpdateCode) -> FunctionVersion:
        if cmd.architectures:
            validation.check_architectures(cmd.architectures, self._architecture)
        await self._read(lambda tx: functions.load(tx, self._scope, cmd.ref.name))
        sha, size = await self._store_code(cmd.code, dry_run=cmd.dry_run)

        def work(tx: Tx) -> FunctionVersion:
            latest = functions.update_code(tx, self._scope, cmd, sha, size)
            if cmd.publish and not cmd.dry_run:
                return self._publish_now(tx, latest)
            return latest

        result = await self._write(work, cmd.ref.name)
        if not cmd.dry_run:
            self._on_change(cmd.ref.name, LATEST)
            await self._submit_latest(cmd.ref.name)
        return result

    async def update_configuration(self, cmd: UpdateConfiguration) -> FunctionVersion:
        validation.check_unsupported(cmd.unsupported)
        changes = cmd.changes
        if "runtime" in changes:
            validation.check_runtime(changes["runtime"], self._runtimes)  # type: ignore[arg-type]
        validation.check_limits(timeout=changes.get("timeout"), memory_size=changes.get("memory_size"))  # type: ignore[arg-type]
        if "environment" in changes:
            validation.check_environment(changes["environment"], self._limits.max_environment_bytes)  # type: ignore[arg-type]
        result = await self._write(lambda tx: functions.update_configuration(tx, self._scope, cmd), cmd.ref.name)
        self._on_change(cmd.ref.name, LATEST)
        await self._submit_latest(cmd.ref.name)
        return result

    async def delete_function(self, ref: FunctionRef) -> None:
        # Code blobs are left in place: a concurrent create may be about to reference the same
        # content. Unreferenced blobs are collected by a later sweep (not yet implemented).
        await self._write(lambda tx: functions.delete(tx, self._scope, ref), ref.name)
        self._on_change(ref.name, ref.qualifier)

    # -- versions and aliases ------------------------------------------------------------------

    async def publish_version(
        self, ref: FunctionRef, *, code_sha256: str | None, description: str | None, revision_id: str | None
    ) -> FunctionVersion:
        return await self._write(
            lambda tx: versions.publish(
                tx, self._scope, ref, code_sha256=code_sha256, description=description, revision_id=revision_id
            ),
            ref.name,
        )

    async def list_versions(self, ref: FunctionRef, *, marker: str | None, max_items: int) -> Page:
        return await self._read(lambda tx: versions.listing(tx, self._scope, ref, marker=marker, max_items=max_items))

    async def create_alias(
        self, ref: FunctionRef, name: str, version: str, description: str, weights: Mapping[str, float] | None
    ) -> Alias:
        return await self._write(
            lambda tx: aliases.create(tx, self._scope, ref, name, version, description, weights or {}), ref.name
        )

    async def get_alias(self, ref: FunctionRef, name: str) -> Alias:
        key = ("alias", ref.name, ref.qualifier or "", name)
        return await self._cached(ref.name, key, lambda tx: aliases.get(tx, self._scope, ref, name))

    async def update_alias(
        self,
        ref: FunctionRef,
        name: str,
        *,
        version: str | None,
        description: str | None,
        weights: Mapping[str, float] | None,
        revision_id: str | None,
    ) -> Alias:
        return await self._write(
            lambda tx: aliases.update(
                tx, self._scope, ref, name, version=version, description=description, weights=weights,
                revision_id=revision_id,
            ),
            ref.name,
        )

    async def delete_alias(self, ref: FunctionRef, name: str) -> None:
        await self._write(lambda tx: aliases.delete(tx, self._scope, ref, name), ref.name)

    async def list_aliases(self, ref: FunctionRef, *, version: str | None, marker: str | None, max_items: int) -> Page:
        return await self._read(
            lambda tx: aliases.listing(tx, self._scope, ref, version=version, marker=marker, max_items=max_items)
        )

    # -- concurrency, account, tags ------------------------------------------------------------

    async def put_reserved_concurrency(self, ref: FunctionRef, value: int) -> int:
        return await self._write(lambda tx: account.put_reserved(tx, self._scope, self._limits, ref, value), ref.name)

    async def get_reserved_concurrency(self, ref: FunctionRef) -> int | None:
        return await self._read(lambda tx: account.get_reserved(tx, self._scope, ref))

    async def delete_reserved_concurrency(self, ref: FunctionRef) -> None:
        await self._write(lambda tx: account.delete_reserved(tx, self._scope, ref), ref.name)

    async def account_settings(self) -> AccountSettings:
        return await self._read(lambda tx: account.settings(tx, self._scope, self._limits))

    async def tag(self, ref: FunctionRef, tags: Mapping[str, str]) -> None:
        await self._write(lambda tx: account.tag(tx, self._scope, ref, tags), ref.name)

    async def untag(self, ref: FunctionRef, keys: list[str]) -> None:
        await self._write(lambda tx: account.untag(tx, self._scope, ref, keys), ref.name)

    async def list_tags(self, ref: FunctionRef) -> Mapping[str, str]:
        return await self._read(lambda tx: account.list_tags(tx, self._scope, ref))

    # -- asynchronous invocation settings ------------------------------------------------------

    async def put_event_invoke_config(self, ref: FunctionRef, config: EventInvokeConfig, *, merge: bool) -> EventInvokeConfig:
        return await self._write(lambda tx: eventconfig.put(tx, self._scope, ref, config, merge=merge), ref.name)

    async def get_event_invoke_config(self, ref: FunctionRef) -> EventInvokeConfig:
        return await self._read(lambda tx: eventconfig.get(tx, self._scope, ref))

    async def delete_event_invoke_config(self, ref: FunctionRef) -> None:
        await self._write(lambda tx: eventconfig.delete(tx, self._scope, ref), ref.name)

    async def list_event_invoke_configs(self, ref: FunctionRef, *, marker: str | None, max_items: int) -> Page:
        return await self._read(lambda tx: eventconfig.listing(tx, self._scope, ref, marker=marker, max_items=max_items))

    async def find_event_invoke_config(self, ref: FunctionRef) -> EventInvokeConfig | None:
        # Cached: the dispatcher asks this for every event it runs.
        key = ("event-config", ref.name, ref.qualifier or "")
        return await self._cached(ref.name, key, lambda tx: eventconfig.find(tx, self._scope, ref))
