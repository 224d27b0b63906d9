"""The Worker: one host's sandboxes (code cache, sandbox backends, the Runtime API server, log
capture, resource limits).

Contract
--------
- `HostRuntimes` says which Lambda runtimes this host can run and with which interpreter. A
  runtime is offered only when its interpreter lives where a sandbox can reach it (the system
  `/usr` tree, which sandboxes bind read-only), never a per-user install (pyenv, nvm).
- `provided.al2023` and `provided.al2` are always offered: the function's own `bootstrap` is the
  runtime.
- `Worker.create_sandbox(spec)` makes a sandbox for one function version and runs its init
  (module code) before returning; `Worker.invoke(sandbox, ...)` runs one invocation in it. A
  sandbox whose init failed is returned dead, holding the init error for the invocation that
  triggered it (Lambda reports init failures on that invocation).
- The probe is pure and cheap (a few `stat` calls and one `node --version`); wiring runs it once
  at start-up and hands the result to the components that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol


@dataclass(frozen=True)
class HostRuntimes:
    # Lambda runtime id -> the interpreter that runs it (None for `provided.*`).
    interpreters: Mapping[str, Path | None]
    architecture: str  # Lambda's name: "x86_64" or "arm64"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.interpreters)


@dataclass(frozen=True)
class FunctionSpec:
    """Everything a worker needs to run one version of a function: what the sandbox is made of.

    Two versions with equal specs behave identically; a changed spec (new code or configuration)
    means new sandboxes (`key` tells pools apart)."""

    name: str
    version: str
    runtime: str
    handler: str
    code_sha256_hex: str
    memory_mb: int
    timeout_s: int
    ephemeral_storage_mb: int
    environment: Mapping[str, str]
    log_group: str
    log_format: str
    application_log_level: str | None
    region: str
    account_id: str
    key: str  # identity of this exact code + configuration (a fingerprint)

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.name}"


class InvokeOutcome(NamedTuple):
    """How one invocation in a sandbox ended. (A NamedTuple, immutable, made per invocation:
    about 3,000 instructions fewer than a frozen dataclass.)"""

    payload: bytes
    function_error: str | None  # "Unhandled" when the function (or its runtime) failed
    reusable: bool  # False: the sandbox is dead and must not be pooled
    duration_ms: float
    log_tail: bytes  # the invocation's log (START..REPORT), last 4 KB


class SandboxHandle(Protocol):
    """What the worker manager holds of a sandbox."""

    @property
    def id(self) -> str: ...

    @property
    def ready(self) -> bool:
        """Initialised, alive and idle: it may be handed an invocation."""

    def init_failure(self, request_id: str) -> InvokeOutcome:
        """For a sandbox whose init failed: the answer for the invocation that triggered it."""

    async def destroy(self) -> None:
        """Kill it and release everything; idempotent."""


class Worker(Protocol):
    async def create_sandbox(self, spec: FunctionSpec) -> SandboxHandle:
        """A new sandbox for `spec`, initialised (or dead, holding its init error)."""

    async def invoke(
        self,
        sandbox: SandboxHandle,
        spec: FunctionSpec,
        *,
        request_id: str,
        payload: bytes,
        invoked_arn: str,
        client_context: str | None,
    ) -> InvokeOutcome: ...
