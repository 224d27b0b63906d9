"""The process backend: the sandbox contract with NO isolation, for hosts without namespaces.

The runtime is a plain child process of the platform:
- the Runtime API listener is on the host's 127.0.0.1 with an ephemeral port
  (`runtime_api_address` = "127.0.0.1:<port>"), reachable by anything on the host;
- `/var/task`, `/var/runtime` and the extra binds' sandbox paths do not exist: the command's argv
  and every environment value are rewritten, component by component (colon-separated lists
  too), to the host's `code_dir`, `runtime_dir` and extra-bind host paths; cwd is `code_dir`;
- `TMPDIR` points to a private directory (removed by `cleanup`); `/tmp` itself is the host's;
- rlimits (NOFILE, CORE=0), its own session, SIGKILL when the platform
  dies (PR_SET_PDEATHSIG);
- when the platform runs as root, the runtime still runs under a per-sandbox unprivileged uid
  (so it cannot read root-only files such as /etc/shadow, and RLIMIT_NPROC applies per sandbox);
  its `code_dir`/`runtime_dir` and their ancestors must then be readable/traversable by others;
- the memory limit, its peak and pids.max come from the same cgroup driver as the isolated
  backend when cgroups are writable, otherwise there is no memory limit and
  `memory_peak_bytes()` is None.

`kill()` SIGKILLs the process group, then whatever the sandbox's cgroup lists; without cgroups
but with a per-sandbox uid, `cleanup` also kills every process left under that uid (a function
that escaped its process group with setsid). Without either, a double-forked daemon survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from firebox.worker.backends._common import (
    DEFAULT_UID_RANGE,
    RunningSandbox,
    SandboxLedger,
    UidPool,
    check_host_dirs,
    die_with_parent,
    drop_to,
    make_state_dir,
    make_private_dir,
    set_rlimits,
    yield_to_platform,
)
from firebox.worker.cgroups import CgroupDriver, CgroupsUnavailable, SandboxCgroup
from firebox.worker.sandbox_api import RUNTIME_API_VARIABLE, SandboxSpec


class ProcessBackend:
    """`SandboxBackend` with no isolation. `why` (the reason the isolated backend is not used)
    goes into `reason`."""

    name = "process"
    isolated = False

    def __init__(
        self,
        *,
        why: str = "the process backend was requested",
        state_dir: Path | None = None,
        uid_range: range = DEFAULT_UID_RANGE,
        drop_privileges: bool = True,
        use_cgroups: bool = True,
        cgroup_base: str | None = None,
    ) -> None:
        self._own_state = state_dir is None
        self.state_dir = make_state_dir("firebox-processes") if state_dir is None else Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o711)  # private dirs inside belong to the sandbox uids
        self._drop = drop_privileges and os.geteuid() == 0
        self._uids = UidPool(uid_range) if self._drop else None
        self._cgroups: CgroupDriver | None = None
        self.cgroup_problem: str | None = None
        if use_cgroups:
            try:
                self._cgroups = CgroupDriver.detect(base=cgroup_base)
            except (CgroupsUnavailable, OSError) as exc:
                self.cgroup_problem = str(exc)
        else:
            self.cgroup_problem = "cgroups disabled by configuration"
        self._ledger = SandboxLedger()
        limits = (
            f"memory limits through {self._cgroups.description}" if self._cgroups
            else f"NO memory limit ({self.cgroup_problem})"
        )
        user = "per-sandbox uids" if self._drop else f"the platform's own uid {os.geteuid()}"
        self.reason = (
            f"process: WARNING: NO ISOLATION: function code runs as plain host processes under {user}, "
            f"can reach the host's network and files, with {limits}; the isolated backend was not "
            f"used because {why}"
        )

    async def spawn(self, spec: SandboxSpec) -> RunningSandbox:
        self._ledger.admit(spec)
        check_host_dirs(spec)
        started = time.monotonic()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        uid: int | None = None
        cgroup: SandboxCgroup | None = None
        tmpdir: Path | None = None
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            listener.setblocking(False)
            address = f"127.0.0.1:{listener.getsockname()[1]}"
            if self._uids is not None:
                uid = self._uids.allocate()
            tmpdir = make_private_dir(self.state_dir, f"tmp-{spec.sandbox_id}", uid)
            if self._cgroups is not None:
                cgroup = self._cgroups.create(spec.sandbox_id, memory_bytes=spec.memory_bytes,
                                              max_pids=spec.max_processes)
            rewrite = _Rewriter(spec)
            argv = [rewrite.value(part) for part in spec.command]
            env = {name: rewrite.value(value) for name, value in spec.environment.items()}
            env[RUNTIME_API_VARIABLE] = address
            env["TMPDIR"] = str(tmpdir)
            attach = cgroup.attach_self if cgroup is not None else None
            drop_uid = uid

            def preexec() -> None:  # in the forked child, before exec
                if attach is not None:
                    attach()
                set_rlimits(spec, per_uid=drop_uid is not None)
                yield_to_platform()
                if drop_uid is not None:
                    drop_to(drop_uid, drop_uid)
                die_with_parent()

            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, cwd=str(spec.code_dir), preexec_fn=preexec, start_new_session=True,
            )
        except BaseException:
            self._ledger.failed()
            listener.close()
            if cgroup is not None:
                await cgroup.remove()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            if uid is not None and self._uids is not None:
                self._uids.release(uid)
            raise
        pgid = proc.pid

        def kill_group() -> bool:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            return False  # a child may have left the group: the cgroup (or uid) sweep follows

        sandbox = RunningSandbox(
            spec=spec, proc=proc, listener=listener, address=address, cgroup=cgroup, uid=uid,
            bwrap=False, extra_kill=kill_group,
            release_uid=self._uids.release if self._uids is not None else (lambda _uid: None),
            on_cleanup=self._ledger.forget, private_dirs=(tmpdir,),
            leftovers_of_uid=uid is not None and cgroup is None,
        )
        self._ledger.spawned(sandbox, started)
        return sandbox

    def statistics(self) -> dict[str, object]:
        cgroups = self._cgroups.description if self._cgroups else None
        return self._ledger.statistics(self.name, self._uids, cgroups)

    async def close(self) -> None:
        if not await self._ledger.close():
            return
        if self._cgroups is not None:
            self._cgroups.close()
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


class _Rewriter:
    """Maps sandbox paths to host paths: `/var/task/x` -> `<code_dir>/x`, in each
    colon-separated component of a value (PATH, PYTHONPATH, NODE_PATH...)."""

    def __init__(self, spec: SandboxSpec) -> None:
        pairs = [("/var/task", str(spec.code_dir)), ("/var/runtime", str(spec.runtime_dir))]
        pairs += [(target.rstrip("/"), str(host)) for host, target in spec.extra_ro_binds]
        self._pairs = sorted(pairs, key=lambda pair: -len(pair[0]))  # longest prefix first

    def path(self, part: str) -> str:
        for prefix, host in self._pairs:
            if part == prefix or part.startswith(prefix + "/"):
                return host + part[len(prefix):]
        return part

    def value(self, value: str) -> str:
        return ":".join(self.path(part) for part in value.split(":"))
