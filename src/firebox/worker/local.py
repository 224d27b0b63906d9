"""The local Worker: turns a `FunctionSpec` into a running, initialised sandbox on this host.

    create_sandbox(spec)
      -> code cache: the package unpacked once per CodeSha256 (and .pyc precompiled)
      -> the Lambda environment (variables of LAMBDA.md + the function's own)
      -> a stem cell of the right kind, specialised (`_specialise`), when there is one
      -> else backend.spawn (bubblewrap, or the plain-process fallback)
      -> Sandbox.start: serve its Runtime API, capture its output, wait for init

Which stem cell (`_cell_key`): Python and Node.js functions whose variables do not act at
process start (`stem_eligible`) take a `plain` cell of their runtime; a Python function whose
own code imports boto3 or botocore takes a `boto3` cell (boto3 already imported) when
`boto3_compatible` holds: nothing in its package or variables could have changed what that
import did in a freshly started runtime. Otherwise the boto3 import would be a plain cell's
memory a function never asked for, or a module the function meant to bring itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from firebox.errors import ServiceError
from firebox.ids import trace_id
from firebox.logs.api import LogSink
from firebox.runtimes.api import (
    RUNTIME_DIR,
    STEM_FLAVOURS,
    bootstrap_command,
    precompile,
    probe_stem,
    runtime_family,
    stem_command,
)
from firebox.worker.api import FunctionSpec, HostRuntimes
from firebox.worker.codecache import CodeCache, PackageTraits
from firebox.worker.runtimeapi import Invocation
from firebox.worker.sandbox import FailedInit, Identity, InvokeOutcome, Sandbox
from firebox.worker.sandbox_api import SandboxBackend, SandboxSpec
from firebox.worker.stemcells import (
    CELL_MEMORY_MB,
    CellKey,
    Population,
    StemCell,
    StemCellPool,
    plan_population,
    populate,
    premade_dirs,
    remove_task_dir,
)

log = logging.getLogger(__name__)

# Where the platform's copy of boto3 appears inside Python sandboxes (AWS ships boto3 in the
# runtime; the bootstrap appends FIREBOX_RUNTIME_LIBS to sys.path, after the function's own code).
SANDBOX_LIBS = "/var/lang/lib/firebox-python"


@dataclass(frozen=True)
class WorkerStatistics:
    created: int
    init_failures: int


SMALL_PACKAGE_ENTRIES = 64

# The Lambda variables that are the same for every function (and are what a stem cell starts with).
NEUTRAL_ENV = {
    "LAMBDA_TASK_ROOT": "/var/task",
    "LAMBDA_RUNTIME_DIR": "/var/runtime",
    "TZ": ":UTC",
    "LANG": "en_US.UTF-8",
    "PATH": "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
    "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib",
}


def likely_environment(runtime: str, region: str | None, *, guesses: bool) -> dict[str, str]:
    """Lambda variables a stem cell of `runtime` starts with besides NEUTRAL_ENV: those every
    function it can serve has (the region, the execution environment, on-demand initialisation)
    and, with `guesses`, the values most functions have (text logs, $LATEST, 128 MB). At its
    specialisation a cell sets only the variables that differ, each a libc call in the cold
    start (measured, all seven: 0.29 -> 0.21 ms for the Python cell's environment)."""
    env = {"AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime}", "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand"}
    if region is not None:
        env.update({"AWS_REGION": region, "AWS_DEFAULT_REGION": region})
    if guesses:
        env.update({"AWS_LAMBDA_LOG_FORMAT": "Text", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"})
    return env


# A function's own variables with these names or prefixes act while the interpreter or libc
# starts (PYTHONPATH, PYTHONHASHSEED, LD_PRELOAD, LC_ALL, MALLOC_ARENA_MAX...): a stem cell has
# started already, so such a function gets a freshly started sandbox instead. Node.js reads
# NODE_OPTIONS, NODE_PATH (the module loader's global paths), NODE_EXTRA_CA_CERTS, NODE_DEBUG,
# NODE_NO_WARNINGS... at start, initialises OpenSSL (OPENSSL_CONF...) and ICU (LANG, LC_*, TZ)
# there, and sizes libuv's thread pool (UV_THREADPOOL_SIZE) when its loader first reads a file.
_LIBC_PREFIXES = ("LD_", "LC_", "MALLOC_", "GLIBC_")
_STARTUP_PREFIXES = {
    "python": ("PYTHON", *_LIBC_PREFIXES),
    "nodejs": ("NODE_", "UV_", "OPENSSL_", "SSL_CERT_", *_LIBC_PREFIXES),
}
_STARTUP_NAMES = frozenset({"LANGUAGE", "TZ", "PATH", "LANG"})
# The boto3 preload loads libcrypto/libssl (through hashlib and ssl), which read these at load.
_BOTO3_STARTUP_PREFIXES = ("OPENSSL_", "SSL_CERT_")
_BOTO3_IMPORTS = frozenset({"boto3", "botocore"})
REFILL_DELAY_S = 1.0  # the latest a taken cell is replaced (`_refill_after_first_invocation`)


def _family(runtime: str) -> str | None:
    try:
        return runtime_family(runtime)
    except ValueError:
        return None


def stem_eligible(spec: FunctionSpec) -> bool:
    """True when a stem cell (Python or Node.js) can become `spec`'s sandbox unchanged in
    behaviour."""
    try:
        family = runtime_family(spec.runtime)
    except ValueError:
        return False
    prefixes = _STARTUP_PREFIXES.get(family)
    return family in STEM_FLAVOURS and prefixes is not None and not any(
        name.startswith(prefixes) or name in _STARTUP_NAMES for name in spec.environment
    )


def boto3_compatible(spec: FunctionSpec, traits: PackageTraits, preload: dict[str, list[str]]) -> bool:
    """True when a `boto3` cell (`preload`: what its import touched, `probe_stem`) serves `spec`
    exactly as a freshly started runtime would: the function imports boto3 or botocore itself,
    its package holds no module the import used or looked for (at its top level, which comes
    first on sys.path: `six.py`, `certifi/`, `uuid.py`...; nor, anywhere, a third-party one such
    as a vendored `lib/botocore/` it might put on sys.path itself, nor an archive it might add),
    and it sets no variable the import read (HOME...) or that its libcrypto reads at load."""
    if not traits.imports & _BOTO3_IMPORTS or traits.archives or not traits.complete:
        return False
    if traits.top_level & set(preload["modules"]) or traits.names & set(preload["third_party"]):
        return False
    read = set(preload["environ"])
    return not any(name in read or name.startswith(_BOTO3_STARTUP_PREFIXES) for name in spec.environment)


def lambda_environment(spec: FunctionSpec, stream: str, *, with_libs: bool) -> dict[str, str]:
    env = dict(spec.environment)
    env.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_VERSION": spec.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": spec.log_group,
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
            "AWS_LAMBDA_LOG_FORMAT": spec.log_format,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "_HANDLER": spec.handler,
            "AWS_REGION": spec.region,
            "AWS_DEFAULT_REGION": spec.region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
            **NEUTRAL_ENV,
        }
    )
    if spec.log_format == "JSON":
        # AWS sets the level variable whenever JSON logging is on (INFO unless configured).
        env["AWS_LAMBDA_LOG_LEVEL"] = spec.application_log_level or "INFO"
    if with_libs:
        env["FIREBOX_RUNTIME_LIBS"] = SANDBOX_LIBS
    return env


def _bootstrap_problem(runtime: str, code_dir: Path) -> str | None:
    """A custom runtime needs an executable `bootstrap` (AWS's Runtime.InvalidEntrypoint)."""
    if not runtime.startswith("provided"):
        return None
    bootstrap = code_dir / "bootstrap"
    if not bootstrap.is_file():
        return "Couldn't find valid bootstrap(s): [/var/task/bootstrap /opt/bootstrap]"
    if not bootstrap.stat().st_mode & 0o111:
        return "fork/exec /var/task/bootstrap: permission denied"
    return None


class LocalWorker:
    def __init__(
        self,
        backend: SandboxBackend,
        code_cache: CodeCache,
        logs: LogSink,
        runtimes: HostRuntimes,
        *,
        python_libs: Path | None = None,
        stem_cells: int = 0,
        region: str | None = None,
    ) -> None:
        self.backend = backend
        self._code_cache = code_cache
        self._logs = logs
        self._runtimes = runtimes
        self._python_libs = python_libs
        self._region = region  # the platform's: every function's AWS_REGION (for stem cells)
        self._created = 0
        self._init_failures = 0
        self._specialised: dict[str, int] = {}  # kind of cell -> sandboxes made from one
        # Stem cells: isolated backend only (the process backend has no sandbox to pre-start);
        # inert until `start()`. `stem_cells` plain Python cells per runtime; half as many (at
        # least one) of the bigger kinds, boto3 and Node.js.
        self._stems: StemCellPool | None = None
        self._stem_cells = stem_cells
        self._preloads: dict[str, dict[str, list[str]]] = {}  # python runtime -> boto3 probe
        self._small: dict[Path, Population | None] = {}  # unpacked package -> linked inline on specialising
        self._probing: asyncio.Task[None] | None = None
        self._owed_refills: dict[str, tuple[CellKey, asyncio.TimerHandle]] = {}  # sandbox id -> its cell's key
        if stem_cells > 0 and backend.isolated:
            self._stems = StemCellPool(backend, code_cache.root / ".cells", self._pool_size, self._cell_spec)
        # Python sandboxes skip compiling the bootstrap when its bytecode is cached (~10 ms).
        for runtime, interpreter in runtimes.interpreters.items():
            if runtime.startswith("python") and interpreter is not None:
                precompile(str(interpreter))

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(self._created, self._init_failures)

    def stem_statistics(self) -> dict[str, object]:
        """The pools' statistics (`StemCellPool.statistics`), with `specialised` in total and
        per kind of cell."""
        stats = self._stems.statistics() if self._stems is not None else {"kinds": {}}
        kinds: dict[str, dict[str, int]] = stats["kinds"]  # type: ignore[assignment]
        for kind, count in self._specialised.items():
            kinds.setdefault(kind, {})["specialised"] = count
        for counts in kinds.values():
            counts.setdefault("specialised", 0)
        return {**stats, "specialised": sum(self._specialised.values())}

    async def start(self) -> None:
        """Start the stem cell pools (default /tmp size): plain ones for every Python and Node.js
        runtime of this host; boto3 ones for the Python runtimes once the boto3 preload has
        been probed (in the background: a second or so of the host's interpreter)."""
        if self._stems is None:
            return
        keys = [CellKey(runtime, 512) for runtime, interpreter in self._runtimes.interpreters.items()
                if interpreter is not None and runtime_family(runtime) in STEM_FLAVOURS]
        await self._stems.start(keys)
        if self._python_libs is not None and self._probing is None:
            self._probing = asyncio.create_task(self._probe_boto3(), name="firebox-stem-probe")

    async def stop(self) -> None:
        """Stop refilling and discard the unspecialised cells (specialised ones are sandboxes:
        their owner destroys them)."""
        for _, handle in self._owed_refills.values():
            handle.cancel()
        self._owed_refills.clear()
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)
            self._probing = None
        if self._stems is not None:
            await self._stems.stop()

    async def _probe_boto3(self) -> None:
        for runtime, interpreter in self._runtimes.interpreters.items():
            if interpreter is None or runtime_family(runtime) != "python":
                continue
            preload = await asyncio.to_thread(probe_stem, str(interpreter), "boto3", self._python_libs)
            if preload is None or "boto3" not in preload["modules"]:
                log.warning("no boto3 stem cells for %s: the boto3 preload could not be probed", runtime)
                continue
            self._preloads[runtime] = preload
            if self._stems is not None:
                self._stems.start_pool(CellKey(runtime, 512, "boto3"))

    def _refill_after_first_invocation(self, sandbox_id: str, key: CellKey) -> None:
        """Replace the cell taken for `sandbox_id` once its first invocation is over (or after
        `REFILL_DELAY_S`, for a sandbox started ahead of any invocation): starting a sandbox
        blocks the event loop for a few ms (fork + exec), which would otherwise land inside the
        very cold start that took the cell (measured: a Node.js hello's first Duration 4 ms
        without, 6 to 26 ms with)."""
        handle = asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._refill_owed, sandbox_id)
        self._owed_refills[sandbox_id] = (key, handle)

    def _refill_owed(self, sandbox_id: str) -> None:
        owed = self._owed_refills.pop(sandbox_id, None)
        if owed is not None:
            owed[1].cancel()
            if self._stems is not None:
                self._stems.refill(owed[0])

    def _pool_size(self, key: CellKey) -> int:
        if key.flavour == "plain" and runtime_family(key.runtime) == "python":
            return self._stem_cells
        return max(1, self._stem_cells // 2)

    def _cell_spec(self, sandbox_id: str, key: CellKey, task_dir: Path) -> SandboxSpec:
        interpreter = self._runtimes.interpreters.get(key.runtime)
        if interpreter is None:
            raise RuntimeError(f"no interpreter for {key.runtime}")
        # The guessed values stay out of a cell that imports boto3 before it has a function:
        # that import sees what a fresh runtime of the function would see.
        environment = {**NEUTRAL_ENV, **likely_environment(key.runtime, self._region, guesses=key.flavour == "plain")}
        libs = self._python_libs if runtime_family(key.runtime) == "python" else None
        if libs is not None:
            environment["FIREBOX_RUNTIME_LIBS"] = SANDBOX_LIBS
        return SandboxSpec(
            sandbox_id=sandbox_id,
            function_name="firebox-stem-cell",
            version="$LATEST",
            runtime=key.runtime,
            code_dir=task_dir,
            runtime_dir=RUNTIME_DIR,
            command=tuple(stem_command(key.runtime, str(interpreter), flavour=key.flavour)),
            environment=environment,
            memory_mb=CELL_MEMORY_MB,
            ephemeral_storage_mb=key.ephemeral_mb,
            extra_ro_binds=((libs, SANDBOX_LIBS),) if libs is not None else (),
        )

    async def _cell_key(self, spec: FunctionSpec) -> CellKey | None:
        """The kind of stem cell that can become `spec`'s sandbox (None: none can)."""
        if self._stems is None or not stem_eligible(spec):
            return None
        preload = self._preloads.get(spec.runtime)
        if preload is not None:
            traits = await self._code_cache.traits(spec.code_sha256_hex)
            if boto3_compatible(spec, traits, preload):
                return CellKey(spec.runtime, spec.ephemeral_storage_mb, "boto3")
        return CellKey(spec.runtime, spec.ephemeral_storage_mb)

    def _compiler(self, runtime: str) -> Path | None:
        """The interpreter that precompiles packages for `runtime` (Python only)."""
        return self._runtimes.interpreters.get(runtime) if runtime.startswith("python") else None

    async def prepare_code(self, runtime: str | None, code_sha256_hex: str) -> None:
        """Ready package `code_sha256_hex` for `runtime` before its first cold start: the
        registry's preparation step, run while the function is Pending (an update InProgress).
        Unpacks it into the code cache, precompiles it with the runtime's interpreter (Python),
        and, where a stem cell could serve it, describes it (`CodeCache.traits`) and works out
        how to link it into a cell (`_small_package`), so the first invoke finds all of it
        done. `create_sandbox` still does whatever is missing (a cache wiped or moved since,
        a restart: traits and plans live in memory). Raises InvalidParameterValue when the
        package fails the zip checks, ServiceError for the host's own failures."""
        if runtime is None:
            return
        try:
            code_dir = await self._code_cache.ensure(code_sha256_hex, python=self._compiler(runtime))
            family = _family(runtime)
            if self._stems is not None and family in STEM_FLAVOURS:
                if family == "python":
                    await self._code_cache.traits(code_sha256_hex)
                if code_dir not in self._small:
                    plan = await asyncio.to_thread(plan_population, code_dir, SMALL_PACKAGE_ENTRIES)
                    self._remember_small(code_dir, plan)
        except KeyError as exc:
            raise ServiceError("The function's code package is missing from the worker's blob store.") from exc
        except OSError as exc:
            raise ServiceError(
                f"The function's code package could not be unpacked on the worker: {exc.strerror or type(exc).__name__}") from exc

    def _small_package(self, code_dir: Path) -> Population | None:
        """The `Population` of `code_dir` when it holds at most SMALL_PACKAGE_ENTRIES files and
        folders (None: more): linking it into a cell takes ~0.1 ms, where a hop to a thread and
        back costs ~0.5 ms on the cold path. Worked out once per package (by `prepare_code`,
        normally), and the walk stops as soon as it is over the bound."""
        if code_dir in self._small:
            return self._small[code_dir]
        return self._remember_small(code_dir, plan_population(code_dir, SMALL_PACKAGE_ENTRIES))

    def _remember_small(self, code_dir: Path, plan: Population | None) -> Population | None:
        if len(self._small) > 4096:
            self._small.clear()
        self._small[code_dir] = plan
        return plan

    async def create_sandbox(self, spec: FunctionSpec) -> Sandbox | FailedInit:
        """A new sandbox for `spec`, initialised. If init failed it is already dead and holds the
        error (`Sandbox.init_failure`) for the invocation that triggered it."""
        interpreter = self._runtimes.interpreters.get(spec.runtime)
        is_python = spec.runtime.startswith("python")
        code_dir = await self._code_cache.ensure(spec.code_sha256_hex, python=self._compiler(spec.runtime))
        key = await self._cell_key(spec) if interpreter is not None else None
        if key is not None and self._stems is not None:
            cell = await self._stems.take(key)
            if cell is not None:
                specialised = None
                try:
                    specialised = await self._specialise(cell, spec, code_dir)
                finally:
                    if specialised is not None and specialised.ready:
                        self._refill_after_first_invocation(specialised.id, key)
                    else:
                        self._stems.refill(key)
                if specialised is not None:
                    return specialised
        sandbox_id = uuid.uuid4().hex
        stream = f"{datetime.now(UTC):%Y/%m/%d}/[{spec.version}]{sandbox_id}"
        with_libs = is_python and self._python_libs is not None
        sandbox_spec = SandboxSpec(
            sandbox_id=sandbox_id,
            function_name=spec.name,
            version=spec.version,
            runtime=spec.runtime,
            code_dir=code_dir,
            runtime_dir=RUNTIME_DIR,
            command=tuple(bootstrap_command(spec.runtime, str(interpreter) if interpreter else "")),
            environment=lambda_environment(spec, stream, with_libs=with_libs),
            memory_mb=spec.memory_mb,
            ephemeral_storage_mb=spec.ephemeral_storage_mb,
            extra_ro_binds=((self._python_libs, SANDBOX_LIBS),) if with_libs and self._python_libs else (),
        )
        identity = Identity(spec.log_group, stream)
        if (problem := _bootstrap_problem(spec.runtime, code_dir)) is not None:
            self._init_failures += 1
            return FailedInit(sandbox_spec, self._logs, identity, "Runtime.InvalidEntrypoint", problem)
        started = time.perf_counter()
        process = await self.backend.spawn(sandbox_spec)
        sandbox = Sandbox(sandbox_spec, process, self._logs, identity, timeout_s=spec.timeout_s)
        self._created += 1
        if not await sandbox.start(started):
            self._init_failures += 1
        return sandbox

    async def _specialise(self, cell: StemCell, spec: FunctionSpec, code_dir: Path) -> Sandbox | None:
        """Make `cell` the sandbox of `spec` (and of nothing else, ever); None when the cell
        could not be prepared (it is discarded; the caller starts a sandbox the usual way)."""
        started = time.perf_counter()
        stream = f"{datetime.now(UTC):%Y/%m/%d}/[{spec.version}]{cell.id}"
        with_libs = runtime_family(spec.runtime) == "python" and self._python_libs is not None
        environment = lambda_environment(spec, stream, with_libs=with_libs)
        sandbox_spec = SandboxSpec(
            sandbox_id=cell.id,
            function_name=spec.name,
            version=spec.version,
            runtime=spec.runtime,
            code_dir=cell.task_dir,
            runtime_dir=RUNTIME_DIR,
            command=cell.spec.command,
            environment=environment,
            memory_mb=spec.memory_mb,
            ephemeral_storage_mb=spec.ephemeral_storage_mb,
            extra_ro_binds=cell.spec.extra_ro_binds,
        )
        try:
            premade = premade_dirs(cell.key.runtime)  # made when the cell was spawned
            if (plan := self._small_package(code_dir)) is not None:
                populate(code_dir, cell.task_dir, plan, premade)  # a few links: less than a thread hop costs
            else:
                await asyncio.to_thread(populate, code_dir, cell.task_dir, None, premade)
            cell.process.set_memory_limit(sandbox_spec.memory_bytes)  # type: ignore[attr-defined]
            if not cell.alive:
                raise OSError("the stem cell died")
        except OSError as exc:
            log.warning("stem cell %s could not be specialised: %s", cell.id, exc)
            await cell.discard()
            return None
        task_dir = cell.task_dir

        async def forget_code(_: Sandbox) -> None:
            await asyncio.to_thread(remove_task_dir, task_dir)

        sandbox = Sandbox(sandbox_spec, cell.process, self._logs, Identity(spec.log_group, stream),  # type: ignore[arg-type]
                          timeout_s=spec.timeout_s, on_death=forget_code, channel=cell.channel)
        cell.channel.specialize(json.dumps(environment).encode())
        self._created += 1
        self._specialised[cell.key.kind] = self._specialised.get(cell.key.kind, 0) + 1
        if not await sandbox.start(started, server=cell.server, exit_task=cell.exit):
            self._init_failures += 1
        return sandbox

    async def invoke(
        self,
        sandbox: Sandbox,
        spec: FunctionSpec,
        *,
        request_id: str,
        payload: bytes,
        invoked_arn: str,
        client_context: str | None,
    ) -> InvokeOutcome:
        deadline_ms = int(time.time() * 1000) + spec.timeout_s * 1000
        invocation = Invocation(
            request_id=request_id,
            payload=payload,
            deadline_ms=deadline_ms,
            invoked_function_arn=invoked_arn,
            trace_id=trace_id(),
            client_context=client_context,
        )
        try:
            return await sandbox.invoke(invocation)
        finally:
            if self._owed_refills:
                self._refill_owed(sandbox.id)
