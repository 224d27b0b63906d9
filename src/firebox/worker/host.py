"""What this host can run: probes for interpreters in the system tree."""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

from firebox.worker.api import HostRuntimes

# Sandboxes bind the system tree read-only, so only interpreters installed there can serve.
SYSTEM_BIN_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))
PYTHON_MINORS = range(9, 20)
_ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def probe(bin_dirs: tuple[Path, ...] = SYSTEM_BIN_DIRS) -> HostRuntimes:
    interpreters: dict[str, Path | None] = {"provided.al2023": None, "provided.al2": None}
    for minor in PYTHON_MINORS:
        for directory in bin_dirs:
            candidate = directory / f"python3.{minor}"
            if candidate.is_file():
                interpreters.setdefault(f"python3.{minor}", candidate)
    for directory in bin_dirs:
        node = directory / "node"
        if node.is_file() and (major := _node_major(node)) is not None:
            interpreters.setdefault(f"nodejs{major}.x", node)
    machine = platform.machine().lower()
    return HostRuntimes(interpreters=interpreters, architecture=_ARCHITECTURES.get(machine, machine))


def _node_major(node: Path) -> int | None:
    try:
        out = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.match(r"v(\d+)\.", out.stdout.strip())
    return int(found.group(1)) if found else None
