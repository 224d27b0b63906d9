"""Node.js handlers (nodejs20.x) on the isolated backend: async, callback and ES-module handlers,
the context object, callbackWaitsForEmptyEventLoop, init once per sandbox, thrown errors."""

from __future__ import annotations

from typing import Any

import pytest

from .engine_fixtures import (
    failed,
    invoke,
    isolated_backend,  # noqa: F401  (fixture)
    node_function,
    ok_json,
)
from .helpers import FireboxServer, function_arn

TIMEOUT_S = 6

ASYNC_CJS = """
const initRandom = Math.random();
let count = 0;

exports.handler = async function(event, context) {
  count += 1;
  console.log("async handler saw", JSON.stringify(event));
  return {
    initRandom,
    count,
    functionName: context.functionName,
    functionVersion: context.functionVersion,
    invokedFunctionArn: context.invokedFunctionArn,
    memoryLimitInMB: context.memoryLimitInMB,
    awsRequestId: context.awsRequestId,
    logGroupName: context.logGroupName,
    logStreamName: context.logStreamName,
    remaining: context.getRemainingTimeInMillis(),
    waits: context.callbackWaitsForEmptyEventLoop,
    event,
  };
};
"""


@pytest.fixture(scope="module")
def async_fn(lam: Any, isolated_backend: FireboxServer) -> str:  # noqa: F811
    return node_function(lam, {"index.js": ASYNC_CJS}, prefix="nodeasync", Timeout=TIMEOUT_S)


def test_async_handler_context_and_warm_random(lam: Any, async_fn: str) -> None:
    first = invoke(lam, async_fn, {"hello": "node"}, LogType="Tail")
    one = ok_json(first)
    assert one["event"] == {"hello": "node"}
    assert one["functionName"] == async_fn
    assert one["functionVersion"] == "$LATEST"
    assert one["invokedFunctionArn"] == function_arn(async_fn)
    assert one["memoryLimitInMB"] == "256", "a string, as AWS's Node runtime gives it"
    assert one["awsRequestId"] == first.request_id
    assert one["logGroupName"] == f"/aws/lambda/{async_fn}"
    assert isinstance(one["remaining"], (int, float)) and 0 < one["remaining"] <= TIMEOUT_S * 1000
    assert one["waits"] is True, "callbackWaitsForEmptyEventLoop defaults to true"
    assert first.log is not None
    # console.log in Lambda's format: <ISO time>\t<request id>\tINFO\t<message>
    line = next((ln for ln in first.log.splitlines() if "async handler saw" in ln), None)
    assert line is not None, first.log
    parts = line.split("\t")
    assert parts[1:3] == [first.request_id, "INFO"], line
    assert parts[3] == 'async handler saw {"hello":"node"}', line

    two = ok_json(invoke(lam, async_fn, {}))
    three = ok_json(invoke(lam, async_fn, {}))
    assert one["initRandom"] == two["initRandom"] == three["initRandom"], "module code runs once per sandbox"
    assert [one["count"], two["count"], three["count"]] == [1, 2, 3]
    assert one["logStreamName"] == two["logStreamName"] == three["logStreamName"]


def test_callback_handler(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = node_function(lam, {"index.js": """
        exports.handler = (event, context, callback) => {
          callback(null, { doubled: event.x * 2, fn: context.functionName });
        };
    """}, prefix="nodecb")
    assert ok_json(invoke(lam, name, {"x": 21})) == {"doubled": 42, "fn": name}
    assert ok_json(invoke(lam, name, {"x": 1})) == {"doubled": 2, "fn": name}


def test_callback_error_argument(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = node_function(lam, {"index.js": """
        exports.handler = (event, context, callback) => callback(new RangeError("out of range"));
    """}, prefix="nodecberr")
    body = failed(invoke(lam, name, {}), "RangeError")
    assert body["errorMessage"] == "out of range"


def test_esm_mjs_handler(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = node_function(lam, {"index.mjs": """
        import { createHash } from 'node:crypto';
        const started = Math.random();
        export const handler = async (event, context) => {
          return { esm: true, started, hash: createHash('sha256').update(event.text).digest('hex').slice(0, 8),
                   fn: context.functionName, remaining: context.getRemainingTimeInMillis() };
        };
    """}, prefix="nodeesm")
    one = ok_json(invoke(lam, name, {"text": "abc"}))
    assert one["esm"] is True and one["fn"] == name
    assert one["hash"] == "ba7816bf"
    assert 0 < one["remaining"] <= 10_000
    assert ok_json(invoke(lam, name, {"text": "abc"}))["started"] == one["started"]


def test_callback_waits_for_empty_event_loop(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    """Default true: the response waits for pending timers (their output is in this invocation's
    log). Set to false: the response goes at once, even with a timer far beyond the timeout."""
    name = node_function(lam, {"index.js": """
        exports.handler = (event, context, callback) => {
          if (event.noWait) {
            context.callbackWaitsForEmptyEventLoop = false;
            setTimeout(() => console.log("late timer fired"), 60000);
            callback(null, { waited: false, flag: context.callbackWaitsForEmptyEventLoop });
            return;
          }
          setTimeout(() => console.log("pending timer fired"), 300);
          callback(null, { waited: true, flag: context.callbackWaitsForEmptyEventLoop });
        };
    """}, prefix="nodewait", Timeout=3)
    waited = invoke(lam, name, {}, LogType="Tail")
    assert ok_json(waited) == {"waited": True, "flag": True}
    assert waited.log is not None
    log_lines = waited.log.splitlines()
    fired = next((i for i, ln in enumerate(log_lines) if ln.endswith("pending timer fired")), None)
    end = next((i for i, ln in enumerate(log_lines) if ln.startswith("END RequestId")), None)
    assert fired is not None and end is not None and fired < end, waited.log

    quick = invoke(lam, name, {"noWait": True}, LogType="Tail")
    assert ok_json(quick) == {"waited": False, "flag": False}, "must answer without waiting for a 60 s timer"
    assert "late timer fired" not in (quick.log or "")


def test_thrown_error_shape(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = node_function(lam, {"index.js": """
        class CustomError extends Error { constructor(m) { super(m); this.name = "CustomError"; } }
        exports.handler = async (event) => {
          if (event.custom) throw new CustomError("custom failure");
          throw new TypeError("bad thing happened");
        };
    """}, prefix="nodethrow")
    result = invoke(lam, name, {}, LogType="Tail")
    body = failed(result, "TypeError")
    assert body["errorMessage"] == "bad thing happened"
    assert isinstance(body["trace"], list) and body["trace"], body
    assert body["trace"][0] == "TypeError: bad thing happened", body["trace"]
    assert any("/var/task/index.js" in frame for frame in body["trace"]), body["trace"]
    custom = failed(invoke(lam, name, {"custom": True}), "CustomError")
    assert custom["errorMessage"] == "custom failure"


def test_node_import_error(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = node_function(lam, {"index.js": "require('no-such-package-xyz');\nexports.handler = async () => 1;\n"},
                         prefix="nodeimport")
    body = failed(invoke(lam, name, {}), "Runtime.ImportModuleError")
    assert "no-such-package-xyz" in body["errorMessage"], body
