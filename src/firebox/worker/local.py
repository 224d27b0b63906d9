"""The local Worker: turns a `FunctionSpec` into a running, initialised sandbox on this host.

    create_sandbox(spec)
      -> code cache: the package unpacked once per CodeSha256 (and .pyc precompiled)
      -> the Lambda environment (variables of LAMBDA.md + the function's own)
      -> backend.spawn (bubblewrap, or the plain-process fallback)
      -> Sandbox.start: serve its Runtime API, capture its output, wait for init
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from firebox.logs.api import LogSink
from firebox.runtimes.api import RUNTIME_DIR, bootstrap_command, precompile
from firebox.worker.api import FunctionSpec, HostRuntimes
from firebox.worker.codecache import CodeCache
from firebox.worker.runtimeapi import Invocation
from firebox.worker.sandbox import FailedInit, Identity, InvokeOutcome, Sandbox
from firebox.worker.sandbox_api import SandboxBackend, SandboxSpec

# Where the platform's copy of boto3 appears inside Python sandboxes (AWS ships boto3 in the
# runtime; the bootstrap appends FIREBOX_RUNTIME_LIBS to sys.path, after the function's own code).
SANDBOX_LIBS = "/var/lang/lib/firebox-python"


@dataclass(frozen=True)
class WorkerStatistics:
    created: int
    init_failures: int


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
            "LAMBDA_TASK_ROOT": "/var/task",
            "LAMBDA_RUNTIME_DIR": "/var/runtime",
            "AWS_REGION": spec.region,
            "AWS_DEFAULT_REGION": spec.region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
            "TZ": ":UTC",
            "LANG": "en_US.UTF-8",
            "PATH": "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
            "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib",
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
    ) -> None:
        self.backend = backend
        self._code_cache = code_cache
        self._logs = logs
        self._runtimes = runtimes
        self._python_libs = python_libs
        self._created = 0
        self._init_failures = 0
        # Python sandboxes skip compiling the bootstrap when its bytecode is cached (~10 ms).
        for runtime, interpreter in runtimes.interpreters.items():
            if runtime.startswith("python") and interpreter is not None:
                precompile(str(interpreter))

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(self._created, self._init_failures)

    async def create_sandbox(self, spec: FunctionSpec) -> Sandbox | FailedInit:
        """A new sandbox for `spec`, initialised. If init failed it is already dead and holds the
        error (`Sandbox.init_failure`) for the invocation that triggered it."""
        interpreter = self._runtimes.interpreters.get(spec.runtime)
        is_python = spec.runtime.startswith("python")
        code_dir = await self._code_cache.ensure(spec.code_sha256_hex, python=interpreter if is_python else None)
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
            trace_id=f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0",
            client_context=client_context,
        )
        return await sandbox.invoke(invocation)
