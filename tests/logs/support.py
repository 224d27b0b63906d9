"""Shared by the logs tests: clients and the test functions' code."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.config

from tests.e2e.helpers import REGION

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
