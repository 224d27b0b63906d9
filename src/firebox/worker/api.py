"""The Worker: one host's sandboxes (code cache, sandbox backends, the Runtime API server, log
capture, resource limits). Today it reports what the host can run; sandboxes arrive with the
execution-engine issue behind this same contract.

Contract
--------
- `HostRuntimes` says which Lambda runtimes this host can run and with which interpreter. A
  runtime is offered only when its interpreter lives where a sandbox can reach it (the system
  `/usr` tree, which sandboxes bind read-only), never a per-user install (pyenv, nvm).
- `provided.al2023` and `provided.al2` are always offered: the function's own `bootstrap` is the
  runtime.
- The probe is pure and cheap (a few `stat` calls and one `node --version`); wiring runs it once
  at start-up and hands the result to the components that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostRuntimes:
    # Lambda runtime id -> the interpreter that runs it (None for `provided.*`).
    interpreters: Mapping[str, Path | None]
    architecture: str  # Lambda's name: "x86_64" or "arm64"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.interpreters)
