"""SIGKILL for an `asyncio.subprocess.Process` that leaves its reaping to asyncio.

Not `Process.kill()`: on asyncio's own event loop that is `Popen.kill`, which polls first (a
`waitpid`) so as not to signal a reaped pid. Between a process's exit and asyncio's child
watcher reaping it, that poll reaps it itself; the watcher then finds no child and reports 255
("Unknown child process pid") instead of the real status. A pidfd signals without reaping.

For a process it signals more than once, `RunningSandbox` keeps its pidfd from the spawn on;
this one opens one per call, for the one-off kills of a timeout or a failed start. Opened after
the process was reaped (by the watcher, in the moment before `returncode` is set), it would
reach whichever process has the pid now, exactly as `os.kill` would: pids are not reused that
fast, and the process being still ours is all `returncode is None` tells anyway.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Protocol


class _Process(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...


def sigkill(process: _Process) -> None:
    """SIGKILL `process` unless it has been reaped; never reaps it."""
    if process.returncode is not None:
        return
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return  # gone, and reaped
    except OSError:  # a kernel without pidfds (before 5.3)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
