"""Shared by the logs tests: clients and the test functions' code."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from firebox.logs.store import SqliteLogStore
from tests.e2e.helpers import REGION


class Clock:
    """An injected wall clock: tests move it instead of waiting."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def run(coro_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an async test on its own event loop (no plugin needed), bounded."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(asyncio.wait_for(coro_fn(*args, **kwargs), timeout=60))

    return wrapper


async def started(path: Path, **kwargs: Any) -> SqliteLogStore:
    """A log store on `path`, started (its writer and sweeper running)."""
    store = SqliteLogStore(path, **kwargs)
    await store.start()
    return store


# A function that prints, logs and fails on demand (python3.11, app.handler).
APP = '''
import json, logging, sys, time
logger = logging.getLogger()
logger.setLevel(logging.INFO)
print("cold start")

def handler(event, context):
    tag = event.get("tag", "")
    action = event.get("action")
    print(f"print {tag}")
    logger.info("info %s", tag)
    if action == "warn":
        logger.warning("slow response %s ms %s", 1200, tag)
    if action == "error":
        logger.error("database unreachable %s", tag)
    if action == "raise":
        raise ValueError(f"boom {tag}")
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "lines":
        for i in range(event["n"]):
            print(f"line {i} {tag}")
    if action == "partial":
        sys.stdout.write(f"no newline {tag}")
    if action == "json":
        logger.info("structured", extra={"latency": event["latency"], "tag": tag})
    return {"tag": tag}
'''


def logs_client(endpoint: str) -> Any:
    return boto3.client(
        "logs", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test",
        config=botocore.config.Config(retries={"max_attempts": 1}, read_timeout=60, connect_timeout=5),
    )
