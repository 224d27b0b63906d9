"""Run the platform behind an HTTP server until SIGINT or SIGTERM.

uvicorn (with httptools and uvloop) carries the HTTP; `wiring` builds the platform; this module
only starts them in order, announces the endpoint, and stops them in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import uvicorn

from firebox.settings import Settings
from firebox.wiring import build_platform

log = logging.getLogger("firebox")

READY_PREFIX = "Firebox ready at "


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


async def _announce(server: uvicorn.Server, settings: Settings, sandboxes: str) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
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


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM once `serve()` returns, which would kill the process
    before the platform stops; here a signal only asks the server to exit, and `_run` then
    stops the platform and returns normally (exit status 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)


async def _run(settings: Settings) -> None:
    platform = await build_platform(settings)
    runtimes = ", ".join(sorted(platform.runtimes.names))
    log.info("runtimes this host can run: %s", runtimes)
    await platform.start()
    config = uvicorn.Config(
        platform.app,
        host=settings.host,
        port=settings.port,
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    backend = platform.backend
    sandboxes = backend.reason if backend.isolated else f"NOT ISOLATED: {backend.reason}"
    announce = asyncio.create_task(_announce(server, settings, sandboxes))
    try:
        await server.serve()
    finally:
        announce.cancel()
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
