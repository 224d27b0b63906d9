"""Run the platform behind an HTTP server until SIGINT or SIGTERM.

`frontend/edge.py` (httptools, on uvloop when installed) carries the HTTP; `wiring` builds the
platform; this module only starts them in order, announces the endpoint, and stops them in
reverse order. Once both are up, it freezes what they made out of the garbage collector's
reach (`gcpauses`: full collections pause the event loop for 7 ms instead of 60).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import IO

from firebox import gcpauses
from firebox.frontend.edge import HttpEdge
from firebox.settings import Settings
from firebox.wiring import build_platform

log = logging.getLogger("firebox")

READY_PREFIX = "Firebox ready at "
GRACE_S = 10.0  # how long requests in flight may take to finish once a stop is asked


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """One server per data directory: two would corrupt each other's view of the registry."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "server.lock", "w")  # noqa: SIM115 - held for the server's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(f"error: another Firebox server is using {data_dir.resolve()}") from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _announce(settings: Settings, port: int, sandboxes: str) -> None:
    endpoint = f"http://{settings.host}:{port}"
    print(f"{READY_PREFIX}{endpoint}", flush=True)
    print(
        f"  boto3:   boto3.client('lambda', endpoint_url='{endpoint}', region_name='{settings.region}',\n"
        "                        aws_access_key_id='test', aws_secret_access_key='test')\n"
        f"  AWS CLI: aws --endpoint-url {endpoint} --region {settings.region} lambda list-functions\n"
        f"  data:    {settings.data_dir.resolve()}\n"
        f"  sandbox: {sandboxes}",
        flush=True,
    )


async def _run(settings: Settings) -> None:
    """Start the platform, then the edge; wait for SIGINT/SIGTERM; stop them in reverse order.
    A signal only sets `stop`: the platform is stopped and `serve` returns normally (exit 0)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gcpauses.install()
    platform = await build_platform(settings)
    runtimes = ", ".join(sorted(platform.runtimes.names))
    log.info("runtimes this host can run: %s", runtimes)
    await platform.start()
    try:
        edge = HttpEdge(platform.app)
        try:
            port = await edge.start(settings.host, settings.port)
        except OSError as exc:
            raise SystemExit(f"error: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from exc
        try:
            platform.app.ready = True
            gcpauses.freeze_startup_objects()
            backend = platform.backend
            _announce(settings, port, backend.reason if backend.isolated else f"NOT ISOLATED: {backend.reason}")
            await stop.wait()
            log.info("stopping: finishing requests in flight (at most %.0f s)", GRACE_S)
        finally:
            platform.app.ready = False
            await edge.stop(GRACE_S)
    finally:
        await platform.stop()
        log.info("stopped")


def serve(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    lock = _lock_data_dir(settings.data_dir)
    try:
        try:
            import uvloop
        except ImportError:  # uvloop is optional off Linux
            asyncio.run(_run(settings))
        else:
            uvloop.run(_run(settings))
    finally:
        lock.close()
    return 0
