"""Sandbox backends and the start-up choice between them.

`choose_backend()` returns the isolated backend when bubblewrap exists, the platform runs as
root, libseccomp loads, and a probe sandbox started with the real flags runs and reports uid 993,
no capabilities, no_new_privs and seccomp mode 2: by default its `ZygoteBackend` form, which forks
Python sandboxes from pre-imported zygotes (with the same isolation, checked by a second probe
that turns zygotes off, loudly, when it fails); `prefer="isolated"` gives bubblewrap alone.
Otherwise it returns the process backend, whose `reason` starts with a loud WARNING (also logged
at WARNING level). Print `backend.reason` at start-up either way.

`prefer="process"` forces the fallback; `prefer="isolated"` and `prefer="zygote"` refuse to fall
back (RuntimeError with the reason). The probe costs one sandbox start (~20 ms).
"""

from __future__ import annotations

import logging
from pathlib import Path

from firebox.worker.backends._common import DEFAULT_UID_RANGE
from firebox.worker.backends.isolated import IsolatedBackend
from firebox.worker.backends.process import ProcessBackend
from firebox.worker.backends.zygote import ZygoteBackend
from firebox.worker.sandbox_api import SandboxBackend

__all__ = ["IsolatedBackend", "ProcessBackend", "ZygoteBackend", "choose_backend"]

log = logging.getLogger(__name__)
PREFERENCES = (None, "zygote", "isolated", "process")


def choose_backend(
    prefer: str | None = None,
    *,
    state_dir: Path | None = None,
    uid_range: range = DEFAULT_UID_RANGE,
    use_cgroups: bool = True,
    cgroup_base: str | None = None,
) -> SandboxBackend:
    """The backend this host should use; see the module docstring. `state_dir` (default: a new
    temporary directory) holds the backend's scratch files; `uid_range` the host uids given to
    sandboxes (give concurrently running platforms disjoint ranges)."""
    if prefer not in PREFERENCES:
        raise ValueError(f"unknown sandbox backend {prefer!r}: use 'zygote', 'isolated' or 'process'")
    options = dict(uid_range=uid_range, use_cgroups=use_cgroups, cgroup_base=cgroup_base)
    sub = (lambda name: state_dir / name) if state_dir is not None else (lambda name: None)
    if prefer == "process":
        backend: SandboxBackend = ProcessBackend(why="the process backend was requested",
                                                 state_dir=sub("process"), **options)
        log.warning("%s", backend.reason)
        return backend
    kind = IsolatedBackend if prefer == "isolated" else ZygoteBackend
    try:
        isolated = kind(state_dir=sub("isolated"), **options)
    except Exception as exc:  # noqa: BLE001 - any reason to fall back is reported
        why = f"{type(exc).__name__}: {exc}"
    else:
        problem = isolated.probe()
        if problem is None and prefer == "zygote" and isinstance(isolated, ZygoteBackend) and isolated.zygote_problem:
            problem = isolated.zygote_problem
        if problem is None:
            log.info("%s", isolated.reason)
            return isolated
        isolated.close_sync()
        why = problem
    if prefer in ("isolated", "zygote"):
        raise RuntimeError(f"the isolated sandbox backend is not usable here: {why}")
    backend = ProcessBackend(why=why, state_dir=sub("process"), **options)
    log.warning("%s", backend.reason)
    return backend
