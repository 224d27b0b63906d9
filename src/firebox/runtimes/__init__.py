"""runtimes: what runs INSIDE a Lambda sandbox.

- `python/bootstrap.py`: the Python runtime, one self-contained standard-library script.
- `nodejs/bootstrap.mjs`: the Node.js runtime, one self-contained ES module (Node built-ins only).
- custom runtimes (`provided.*`) bring their own `/var/task/bootstrap`.

Each bootstrap speaks AWS's Runtime API (`http://$AWS_LAMBDA_RUNTIME_API/2018-06-01`) as AWS's
runtime interface clients do, so the worker starts it as a plain process with the Lambda
environment variables and it serves invocations until it is killed. The contract (variables,
output, exit statuses) is the docstring of `firebox.runtimes.api`.

The platform uses `RUNTIME_DIR` (this folder, bound read-only at `/var/runtime` in sandboxes)
and `bootstrap_command(runtime, interpreter)` (the argv that starts a runtime). They are defined
in `firebox.runtimes.api`, the component's contract, because the layering rules let other
components import only `firebox.<component>.api`, while this component may import nothing but
the standard library, its own siblings included; they are offered here too, forwarded lazily.
"""

from __future__ import annotations

import importlib
import pathlib
from typing import Any

RUNTIME_DIR = pathlib.Path(__file__).resolve().parent

__all__ = ["MOUNT_POINT", "RUNTIME_DIR", "bootstrap_command", "precompile", "runtime_family"]


def __getattr__(name: str) -> Any:  # PEP 562: `from firebox.runtimes import bootstrap_command`
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
