"""Typed, frozen settings: read once at start-up, then passed explicitly.

Nothing in Firebox reads the environment or a global config after start-up. The CLI builds a
`Settings` from its flags and `FIREBOX_*` variables (`Settings.from_env`), and `wiring.py` hands
the pieces each component needs to its constructor.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9876
DEFAULT_DATA_DIR = Path(".firebox")


@dataclass(frozen=True)
class Limits:
    """The quotas AWS Lambda enforces, with AWS's defaults."""

    account_concurrency: int = 1000
    # Reserved concurrency may never leave fewer than this many executions unreserved.
    min_unreserved_concurrency: int = 100
    max_zip_bytes: int = 50 * 1024 * 1024
    max_unzipped_bytes: int = 250 * 1024 * 1024
    # A zip with more entries than this is refused before anything is extracted.
    max_zip_entries: int = 20_000
    # 50 MB of zip, base64-encoded inside a JSON document: AWS's figure for CreateFunction.
    max_request_bytes: int = 69_905_067
    max_environment_bytes: int = 4 * 1024
    total_code_size: int = 80_530_636_800


def _flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    account_id: str = "000000000000"
    region: str = "us-east-1"
    limits: Limits = field(default_factory=Limits)
    # How long a new function stays `Pending` (and an update `InProgress`) at the least, on top
    # of the real preparation work. 0 in production; raise it to exercise clients' waiters.
    activation_delay_s: float = 0.0
    # Sandboxes: "auto" (isolated where Linux namespaces work, Python sandboxes forked from
    # zygotes; else the plain-process fallback), "zygote" (the same, never falling back),
    # "isolated" (bubblewrap alone) or "process".
    sandbox_backend: str = "auto"
    # How long an idle warm sandbox is kept before it is reaped: "hybrid" learns each function's
    # idle times (workers/keepalive.py) and falls back to `keep_alive_s` until it has enough;
    # "fixed" always keeps `keep_alive_s`.
    keep_alive_policy: str = "hybrid"
    keep_alive_s: float = 300.0
    # At most this long a sandbox serves (less a random quarter at most), as AWS Lambda ends its
    # execution environments "every few hours ... even for functions that are invoked
    # continuously": what a long-lived process accumulates (leaks) is bounded. 0: for ever.
    max_sandbox_lifetime_s: float = 7200.0
    # A folder holding boto3 for Python sandboxes (AWS ships it in the runtime); None: the one
    # `bin/setup` installs beside the virtual environment, if present.
    python_libs: Path | None = None
    # How often the log store deletes events older than their group's RetentionInDays.
    log_sweep_interval_s: float = 60.0
    # How long the log writer waits after a first record for others to share its transaction
    # (logs/store.py; longer when the server is mostly idle). What waits there dies with the
    # process; an asynchronous event's completion waits for it.
    log_linger_s: float = 0.010
    # Asynchronous invocation: the first retry of a failed event waits this long, the second
    # twice as long (Lambda: about 1 and 2 minutes); events in flight at once, overall and per
    # function (the per-function cap keeps one function's flood from starving the others).
    async_retry_base_s: float = 60.0
    async_concurrency: int = 32
    async_per_function: int = 8
    # Cold starts (isolated backend): this many pre-started, unspecialised Python sandboxes
    # ("stem cells", worker/stemcells.py) per Python runtime and /tmp size, and half as many (at
    # least 1) boto3-preloaded Python cells and Node.js cells; 0 turns them all off.
    stem_cells: int = 4
    # Time the synchronous invoke path hop by hop (firebox.hops, GET /_firebox/hops): for
    # bench/hops.py; off by default, when each hop is a call of a builtin that does nothing.
    trace_hops: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from `FIREBOX_*` variables; explicit overrides (CLI flags) win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        casts: dict[str, Callable[[str], object]] = {
            "host": str,
            "port": int,
            "data_dir": Path,
            "account_id": str,
            "region": str,
            "activation_delay_s": float,
            "sandbox_backend": str,
            "keep_alive_policy": str,
            "keep_alive_s": float,
            "max_sandbox_lifetime_s": float,
            "python_libs": Path,
            "log_sweep_interval_s": float,
            "log_linger_s": float,
            "async_retry_base_s": float,
            "async_concurrency": int,
            "async_per_function": int,
            "stem_cells": int,
            "trace_hops": _flag,
        }
        for name, cast in casts.items():
            raw = env.get(f"FIREBOX_{name.upper()}")
            if raw is not None and raw != "":
                values[name] = cast(raw)
        concurrency = env.get("FIREBOX_ACCOUNT_CONCURRENCY")
        if concurrency:
            limit = int(concurrency)
            # AWS keeps 100 executions unreserved; a smaller account keeps them all unreserved.
            values["limits"] = Limits(account_concurrency=limit, min_unreserved_concurrency=min(100, limit))
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        if not (len(self.account_id) == 12 and self.account_id.isdigit()):
            raise ValueError(f"account id must be 12 digits, got {self.account_id!r}")
        if not self.region or " " in self.region:
            raise ValueError(f"invalid region {self.region!r}")
        if self.limits.account_concurrency < 1:
            raise ValueError(f"account concurrency must be at least 1, got {self.limits.account_concurrency}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"invalid port {self.port}")
        # At most 1 s: fifty times that while idle, which async completions then wait for.
        if not 0 <= self.log_linger_s <= 1:
            raise ValueError(f"log linger must be between 0 and 1 second, got {self.log_linger_s}")
        if not self.max_sandbox_lifetime_s >= 0:
            raise ValueError("max sandbox lifetime must be 0 (for ever) or more seconds, "
                             f"got {self.max_sandbox_lifetime_s}")
        if self.stem_cells < 0:
            raise ValueError(f"stem cells must be 0 or more, got {self.stem_cells}")
        if self.keep_alive_policy not in ("hybrid", "fixed"):
            raise ValueError(f"keep-alive policy must be hybrid or fixed, got {self.keep_alive_policy!r}")
        if self.sandbox_backend not in ("auto", "zygote", "isolated", "process"):
            raise ValueError(f"sandbox backend must be auto, zygote, isolated or process, got {self.sandbox_backend!r}")

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
