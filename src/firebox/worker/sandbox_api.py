"""The sandbox layer's contract: start ONE sandbox process and hand the platform handles on it.

Who does what
-------------
A `SandboxBackend` turns a `SandboxSpec` into a running `SandboxProcess`. The platform (the
worker's Runtime API server, log capture and lifecycle code) then:

- accepts connections on `SandboxProcess.runtime_api` (a listening, non-blocking TCP socket) and
  speaks the Lambda Runtime API on them; the runtime inside reaches that socket at
  `AWS_LAMBDA_RUNTIME_API`, which the backend adds to the environment because it owns the address;
  and speaks it too on `SandboxProcess.runtime_api_connection` when the backend made one: a
  connected AF_UNIX socket whose other end Firebox's own runtime was started holding (the zygote
  backend's Python runtimes). A round trip on it costs less than on loopback TCP, and it leaves
  nothing to connect or accept in a cold start;
- reads the runtime's output from `stdout` / `stderr` (it MUST keep reading: a full pipe blocks
  the runtime);
- decides when to `kill()` (timeout, OOM, retirement) and awaits `wait()`, then `cleanup()`.

The backend never interprets the Runtime API, never times out an invocation and never retries:
those are platform decisions.

Backends
--------
`isolated` (backends/isolated.py): bubblewrap with new user/pid/ipc/uts/mount/cgroup namespaces,
a private network namespace holding only `lo` and the Runtime API socket (so 127.0.0.1:9001 is the
platform and nothing else of the host is reachable), a read-only root made of the host's `/usr`
and a minimal `/etc`, a sized `/tmp`, a per-sandbox unprivileged host uid (uid 993 inside, like
Lambda's `sbx_user1051`), no capabilities, `no_new_privs`, a seccomp deny-list, rlimits and a
cgroup memory limit.

`zygote` (backends/zygote.py): the isolated backend, with the same isolation, that forks Python
sandboxes from pre-imported interpreters (`runtimes/python/zygote.py`) instead of starting
bubblewrap and a new interpreter for each; other commands go to bubblewrap.

`process` (backends/process.py): the same contract with NO isolation, for hosts without
namespaces; its `reason` says so loudly.

Exit statuses
-------------
`wait()` returns what `subprocess` would: the exit code, or the negative number of the signal that
killed the runtime (-9 after an OOM kill or `kill()`). The isolated backend learns it through
bubblewrap, which reports a signal death as 128+N: an exit code between 129 and 192 is therefore
reported as the signal -(code-128); a runtime that calls `exit(137)` itself is indistinguishable
from one killed by SIGKILL (as in a shell).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol, runtime_checkable

SANDBOX_ID = re.compile(r"[0-9a-f]{32}")
RUNTIME_API_VARIABLE = "AWS_LAMBDA_RUNTIME_API"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a backend needs to start one sandbox. Paths named `host` are the host's; all
    other paths (`command`, environment values, the targets of `extra_ro_binds`) are as seen
    INSIDE the sandbox. The process backend, which has no "inside", rewrites the `/var/task`,
    `/var/runtime` and extra-bind prefixes of argv and environment values to the host paths."""

    sandbox_id: str  # 32 lowercase hex digits; names the cgroup, the hostname, temp dirs
    function_name: str
    version: str
    runtime: str  # Lambda runtime id ("python3.11", "nodejs20.x", "provided.al2023")
    # Host path of the unpacked code, read-only at /var/task. Its files must be readable by
    # others (the sandbox runs as an unprivileged per-sandbox uid): the code cache makes them so.
    code_dir: Path
    runtime_dir: Path  # host path, read-only at /var/runtime (the bootstrap)
    # argv INSIDE the sandbox: ("/usr/bin/python3.11", "/var/runtime/python/bootstrap.py") or
    # ("/var/task/bootstrap",). argv[0] must be an absolute path.
    command: tuple[str, ...]
    # The complete environment inside, except AWS_LAMBDA_RUNTIME_API (added by the backend).
    environment: Mapping[str, str]
    memory_mb: int  # MemorySize: the cgroup memory limit
    ephemeral_storage_mb: int  # EphemeralStorage: the size of /tmp (and RLIMIT_FSIZE)
    # (host path, sandbox path) pairs bound read-only, e.g. a folder with boto3 for python runtimes.
    extra_ro_binds: tuple[tuple[Path, str], ...] = ()
    # RLIMIT_NPROC and pids.max (both count threads too); RLIMIT_NOFILE.
    max_processes: int = 1024
    max_open_files: int = 1024

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.sandbox_id, str) or not SANDBOX_ID.fullmatch(self.sandbox_id):
            problems.append(f"sandbox_id must be 32 lowercase hex digits, got {self.sandbox_id!r}")
        if not self.command or not str(self.command[0]).startswith("/"):
            problems.append(f"command must start with an absolute path, got {self.command!r}")
        if any("\0" in part for part in self.command):
            problems.append("command contains a NUL byte")
        for name, value in self.environment.items():
            if not _ENV_NAME.fullmatch(name):
                problems.append(f"invalid environment variable name {name!r}")
            elif "\0" in value:
                problems.append(f"environment variable {name} contains a NUL byte")
        if RUNTIME_API_VARIABLE in self.environment:
            problems.append(f"{RUNTIME_API_VARIABLE} is set by the backend, not the spec")
        if self.memory_mb < 1 or self.ephemeral_storage_mb < 1:
            problems.append("memory_mb and ephemeral_storage_mb must be positive")
        if self.max_processes < 1 or self.max_open_files < 16:
            problems.append("max_processes must be >= 1 and max_open_files >= 16")
        # os.path, not Path(...).is_absolute(): building Path objects was most of this check's
        # cost, and a spec is made on every cold start.
        for path in (self.code_dir, self.runtime_dir, *(host for host, _ in self.extra_ro_binds)):
            if not os.path.isabs(path):
                problems.append(f"host path {path} must be absolute")
        for _, target in self.extra_ro_binds:
            if not target.startswith("/") or "/../" in target + "/" or target.rstrip("/") in _RESERVED:
                problems.append(f"bad sandbox path {target!r} for an extra bind")
        if problems:
            raise ValueError("invalid SandboxSpec: " + "; ".join(problems))
        if not isinstance(self.code_dir, Path):
            object.__setattr__(self, "code_dir", Path(self.code_dir))
        if not isinstance(self.runtime_dir, Path):
            object.__setattr__(self, "runtime_dir", Path(self.runtime_dir))
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "environment", MappingProxyType(dict(self.environment)))

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * 1024 * 1024

    @property
    def ephemeral_bytes(self) -> int:
        return self.ephemeral_storage_mb * 1024 * 1024


# Sandbox paths an extra bind may not replace.
_RESERVED = frozenset({"", "/usr", "/etc", "/proc", "/dev", "/tmp", "/var/task", "/var/runtime",
                       "/bin", "/sbin", "/lib", "/lib64", "/lib32"})


@runtime_checkable
class SandboxProcess(Protocol):
    """One running sandbox. Created by `SandboxBackend.spawn`; owned by the platform."""

    pid: int  # host pid of the process the backend started (bwrap, or the runtime itself)
    # LISTENING, non-blocking TCP socket; the runtime connects to it at `runtime_api_address`.
    # Accept with `loop.sock_accept` or `asyncio.start_server(sock=...)`. Closed by cleanup().
    runtime_api: socket.socket
    runtime_api_address: str  # as the sandbox sees it: "127.0.0.1:9001" when isolated
    # CONNECTED, non-blocking stream socket whose other end the runtime holds from its start, or
    # None. Serve it with `loop.connect_accepted_socket`. Closed by cleanup().
    runtime_api_connection: socket.socket | None
    stdout: asyncio.StreamReader  # the runtime's output: the platform must keep reading both
    stderr: asyncio.StreamReader

    async def wait(self) -> int:
        """Wait for the sandbox to exit; the exit code, or -signal (like subprocess)."""
        ...

    def kill(self) -> None:
        """SIGKILL every process of the sandbox. Idempotent, never blocks, safe after exit."""
        ...

    def memory_peak_bytes(self) -> int | None:
        """Peak memory since start or the last reset ("Max Memory Used"); None if unknown."""
        ...

    def reset_memory_peak(self) -> None:
        """Start a new peak measurement (call before each invocation of a warm sandbox)."""
        ...

    def take_memory_peak(self) -> int | None:
        """`memory_peak_bytes()`, then `reset_memory_peak()`, in one call (after each invocation)."""
        ...

    def oom_kills(self) -> int:
        """How many processes the sandbox's memory limit has OOM-killed so far (0 if unknown)."""
        ...

    async def cleanup(self) -> None:
        """After exit (kills first if still running): remove cgroups and temp dirs, close the
        socket, give the sandbox's uid back. Idempotent."""
        ...


@runtime_checkable
class SandboxBackend(Protocol):
    name: str  # "isolated" or "process"
    isolated: bool  # False: function code runs with no isolation from the host
    reason: str  # one sentence: why this backend, and what it does not enforce; printed at start

    async def spawn(self, spec: SandboxSpec) -> SandboxProcess:
        """Start the sandbox; returns once the process runs. OSError or FireboxError (ServiceError)
        when it could not start; nothing is left behind then."""
        ...

    def statistics(self) -> dict[str, object]:
        """Counters for metrics and the status page (spawned, live, failed, ...)."""
        ...

    async def close(self) -> None:
        """Release the backend's own resources (cgroup instance group, state dir) once every
        sandbox was cleaned up. Idempotent."""
        ...
