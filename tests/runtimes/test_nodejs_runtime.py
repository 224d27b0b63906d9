"""The Node.js bootstrap, run for real against a fake Runtime API (skipped without node)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from firebox.runtimes.api import RUNTIME_DIR

from .conftest import NODE, Starter
from .fakeapi import ARN, FakeRuntimeAPI

INDEX_CJS = """
    const RANDOM = Math.random();
    let calls = 0;
    const state = {};
    console.log('module loaded');

    exports.handler = async (event, context) => ({ event, random: RANDOM, calls: ++calls });

    exports.callback = (event, context, callback) => {
      setTimeout(() => callback(null, { via: 'callback', event }), 5);
    };

    // callbackWaitsForEmptyEventLoop: the response waits for the timer the handler left behind.
    exports.waits = (event, context, callback) => {
      callback(null, 'waited');
      setTimeout(() => { state.fired = Date.now(); }, 150);
    };
    exports.nowait = (event, context, callback) => {
      context.callbackWaitsForEmptyEventLoop = false;
      callback(null, 'did not wait');
      setTimeout(() => { state.fired = Date.now(); }, 300);
    };
    exports.state = async () => state;

    exports.context = async (event, context) => ({
      functionName: context.functionName,
      functionVersion: context.functionVersion,
      invokedFunctionArn: context.invokedFunctionArn,
      memoryLimitInMB: context.memoryLimitInMB,
      awsRequestId: context.awsRequestId,
      logGroupName: context.logGroupName,
      logStreamName: context.logStreamName,
      callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
      identity: context.identity ?? 'absent',
      clientContext: context.clientContext ?? 'absent',
      remaining: context.getRemainingTimeInMillis(),
      trace: process.env._X_AMZN_TRACE_ID,
      deprecated: [typeof context.done, typeof context.succeed, typeof context.fail],
    });

    exports.remaining = async (event, context) => {
      const first = context.getRemainingTimeInMillis();
      await new Promise((resolve) => setTimeout(resolve, 30));
      return [first, context.getRemainingTimeInMillis()];
    };

    exports.throws = async () => { throw new Error('boom'); };
    exports.throwsSync = () => { throw new TypeError('sync boom'); };
    exports.callbackError = (event, context, callback) => callback(new Error('called back'));
    exports.succeed = (event, context) => { context.succeed({ old: 'style' }); };
    exports.nothing = () => {};
    exports.circular = async () => { const o = {}; o.self = o; return o; };
    exports.logs = async () => {
      console.log('hello %s %d', 'world', 42);
      console.info('info');
      console.warn('two\\nlines');
      console.error('error', { a: 1 });
      console.debug('debug');
      return 'logged';
    };
    exports.nested = { deeper: async () => 'nested export' };
"""


def cjs(start_node: Starter, handler: str, **env: str):
    return start_node(f"index.{handler}", {"index.js": INDEX_CJS}, **env)


def test_async_handler(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "handler")
    posted = api.call({"a": "é"})
    assert posted.kind == "response"
    assert posted.json()["event"] == {"a": "é"}


def test_module_code_runs_once(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "handler")
    results = [api.call({}).json() for _ in range(3)]
    assert [r["calls"] for r in results] == [1, 2, 3]
    assert len({r["random"] for r in results}) == 1  # Math.random() at module level, once


def test_callback_handler(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "callback")
    assert api.call({"x": 1}).json() == {"via": "callback", "event": {"x": 1}}


def test_callback_waits_for_empty_event_loop(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "waits")
    request_ms = time.time() * 1000
    posted = api.call({})
    assert posted.json() == "waited"
    assert posted.arrived_ms - request_ms >= 140  # held until the handler's 150 ms timer ran


def test_callback_without_waiting(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "nowait")
    request_ms = time.time() * 1000
    posted = api.call({})
    assert posted.json() == "did not wait"
    assert posted.arrived_ms - request_ms < 250  # not held for the 300 ms timer


def test_context_fields(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "context")
    request_id = api.invoke({}, deadline_ms=int(time.time() * 1000) + 5000, trace_id="Root=1-abc")
    fields = api.outcome(request_id).json()
    assert 3000 < fields.pop("remaining") <= 5000
    assert fields == {
        "functionName": "fn",
        "functionVersion": "$LATEST",
        "invokedFunctionArn": ARN,
        "memoryLimitInMB": "256",
        "awsRequestId": request_id,
        "logGroupName": "/aws/lambda/fn",
        "logStreamName": "2024/01/01/[$LATEST]0123456789abcdef0123456789abcdef",
        "callbackWaitsForEmptyEventLoop": True,
        "identity": "absent",
        "clientContext": "absent",
        "trace": "Root=1-abc",
        "deprecated": ["function", "function", "function"],
    }


def test_client_context_and_identity(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "context")
    fields = api.call({}, client_context='{"custom": {"k": "v"}}', identity='{"cognitoIdentityId": "id"}').json()
    assert fields["clientContext"] == {"custom": {"k": "v"}}
    assert fields["identity"] == {"cognitoIdentityId": "id"}


def test_remaining_time_decreases(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "remaining")
    first, second = api.call({}, deadline_ms=int(time.time() * 1000) + 10_000).json()
    assert 8000 < first <= 10_000
    assert first - second >= 25


def test_thrown_error_shape(api: FakeRuntimeAPI, start_node: Starter, task_root: Path) -> None:
    runtime = cjs(start_node, "throws")
    request_id = api.invoke({})
    posted = api.outcome(request_id)
    assert posted.kind == "error"
    assert posted.headers["lambda-runtime-function-error-type"] == "Unhandled"
    body = posted.json()
    assert set(body) == {"errorType", "errorMessage", "trace"}
    assert (body["errorType"], body["errorMessage"], body["trace"][0]) == ("Error", "boom", "Error: boom")
    assert str(task_root / "index.js") in body["trace"][1]
    line = runtime.wait_line(lambda s: "\tERROR\tInvoke Error" in s)
    logged = json.loads(line.split("\tInvoke Error \t", 1)[1])
    assert (logged["errorType"], logged["errorMessage"], logged["stack"][0]) == ("Error", "boom", "Error: boom")
    assert f"\t{request_id}\t" in line


def test_sync_throw_and_callback_error(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "throwsSync")
    body = api.call({}).json()
    assert (body["errorType"], body["errorMessage"]) == ("TypeError", "sync boom")


def test_callback_error(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "callbackError")
    body = api.call({}).json()
    assert (body["errorType"], body["errorMessage"]) == ("Error", "called back")


def test_deprecated_succeed_and_no_result(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "succeed")
    assert api.call({}).json() == {"old": "style"}


def test_sync_handler_without_result_answers_null(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "nothing")
    posted = api.call({})
    assert (posted.kind, posted.body) == ("response", b"null")


def test_unserialisable_result(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "circular")
    posted = api.call({})
    assert posted.kind == "error"
    assert posted.json()["errorMessage"] == "Unable to stringify response body"


def test_nested_export(api: FakeRuntimeAPI, start_node: Starter) -> None:
    cjs(start_node, "nested.deeper")
    assert api.call({}).json() == "nested export"


def test_console_format(api: FakeRuntimeAPI, start_node: Starter) -> None:
    runtime = cjs(start_node, "logs")
    request_id = api.invoke({})
    assert api.outcome(request_id).json() == "logged"
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    hello = runtime.wait_line(lambda s: s.endswith("hello world 42"))
    assert re.fullmatch(rf"{stamp}\t{request_id}\tINFO\thello world 42", hello), hello
    assert runtime.wait_line(lambda s: s.endswith("\tWARN\ttwo\rlines"))
    assert runtime.wait_line(lambda s: s.endswith("\tERROR\terror { a: 1 }"))
    assert runtime.wait_line(lambda s: s.endswith("\tDEBUG\tdebug"))
    # during init there is no request yet: AWS writes "undefined"
    assert re.fullmatch(rf"{stamp}\tundefined\tINFO\tmodule loaded", runtime.wait_line(lambda s: "module loaded" in s))


def test_console_json_format_and_level(api: FakeRuntimeAPI, start_node: Starter) -> None:
    runtime = cjs(start_node, "logs", AWS_LAMBDA_LOG_FORMAT="JSON", AWS_LAMBDA_LOG_LEVEL="INFO")
    request_id = api.invoke({})
    api.outcome(request_id)
    record = json.loads(runtime.wait_line(lambda s: "hello world 42" in s))
    assert {k: record[k] for k in ("level", "requestId", "message")} == {
        "level": "INFO", "requestId": request_id, "message": "hello world 42"}
    runtime.wait_line(lambda s: '"WARN"' in s)
    assert not any('"debug"' in line for line in runtime.stdout)  # below AWS_LAMBDA_LOG_LEVEL


def test_esm_mjs_handler(api: FakeRuntimeAPI, start_node: Starter) -> None:
    source = "const r = Math.random();\nexport const handler = async (event) => ({ esm: true, r });\n"
    start_node("app.handler", {"app.mjs": source})
    first, second = api.call({}).json(), api.call({}).json()
    assert first["esm"] is True and first["r"] == second["r"]


def test_js_with_type_module_package_json(api: FakeRuntimeAPI, start_node: Starter) -> None:
    files = {"package.json": '{"type": "module"}', "app.js": "export const handler = async () => 'esm js';\n"}
    start_node("app.handler", files)
    assert api.call({}).json() == "esm js"


def test_cjs_file_and_nested_directory(api: FakeRuntimeAPI, start_node: Starter) -> None:
    start_node("src/lib/fn.handler", {"src/lib/fn.cjs": "exports.handler = async () => 'cjs nested';\n"})
    assert api.call({}).json() == "cjs nested"


def test_runtime_libs_and_layers_resolve_through_node_path(api: FakeRuntimeAPI, start_node: Starter, tmp_path: Path) -> None:
    libs = tmp_path / "libs"
    (libs / "platform-sdk").mkdir(parents=True)
    (libs / "platform-sdk" / "index.js").write_text("module.exports = 'from the platform';\n")
    files = {"index.js": "exports.handler = async () => [require('platform-sdk'), process.env.NODE_PATH];\n"}
    start_node("index.handler", files, FIREBOX_RUNTIME_LIBS=str(libs))
    found, node_path = api.call({}).json()
    assert found == "from the platform"
    assert re.fullmatch(r"/opt/nodejs/node\d+/node_modules:/opt/nodejs/node_modules:.*", node_path), node_path


# --- init errors ------------------------------------------------------------------------------


def assert_init_error(api: FakeRuntimeAPI, runtime, error_type: str, message: str) -> dict:
    posted = api.init_error()
    assert posted.headers["lambda-runtime-function-error-type"] == error_type
    body = posted.json()
    assert body["errorType"] == error_type
    assert body["errorMessage"].startswith(message), body["errorMessage"]
    assert isinstance(body["trace"], list)
    assert runtime.wait_exit() == 129
    assert runtime.wait_line(lambda s: "\tundefined\tERROR\tUncaught Exception \t{" in s)
    assert api.next_calls.empty()
    return body


def test_missing_module(api: FakeRuntimeAPI, start_node: Starter) -> None:
    runtime = start_node("missing.handler")
    assert_init_error(api, runtime, "Runtime.ImportModuleError", "Error: Cannot find module 'missing'")


def test_handler_not_exported(api: FakeRuntimeAPI, start_node: Starter) -> None:
    runtime = cjs(start_node, "nope")
    assert_init_error(api, runtime, "Runtime.HandlerNotFound", "index.nope is undefined or not exported")


def test_syntax_error(api: FakeRuntimeAPI, start_node: Starter) -> None:
    runtime = start_node("bad.handler", {"bad.js": "exports.handler = async () => {\n"})
    assert_init_error(api, runtime, "Runtime.UserCodeSyntaxError", "SyntaxError: ")


def test_malformed_handler(api: FakeRuntimeAPI, start_node: Starter) -> None:
    runtime = start_node("nodot")
    assert_init_error(api, runtime, "Runtime.MalformedHandlerName", "Bad handler")


def test_error_thrown_by_module_code(api: FakeRuntimeAPI, start_node: Starter) -> None:
    runtime = start_node("boom.handler", {"boom.mjs": "throw new RangeError('at import');\n"})
    assert_init_error(api, runtime, "RangeError", "at import")


def test_exits_when_the_runtime_api_goes_away(api: FakeRuntimeAPI, start_node: Starter) -> None:
    runtime = cjs(start_node, "handler")
    api.wait_next()
    api.close()
    assert runtime.wait_exit() == 1
    assert runtime.stderr == []


# The trace ID variable, in a node of its own: it changes the process's environment.
TRACE_ID_SCRIPT = r"""
import { execFileSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
globalThis[Symbol.for('firebox.stem')] = true;  // import the bootstrap without running its main()
const { TraceIdVariable } = await import(process.argv[2]);
const variable = new TraceIdVariable();
const name = '_X_AMZN_TRACE_ID';
const inWorker = () => new Promise((resolve) => {
  const worker = new Worker(`require('node:worker_threads').parentPort.postMessage(process.env.${name} ?? null)`,
                            { eval: true });
  worker.once('message', (value) => worker.terminate().then(() => resolve(value)));
});
const views = async () => [process.env[name] ?? null, execFileSync('sh', ['-c', `echo "$${name}"`]).toString().trim(),
                           await inWorker()];
const out = { addon: variable.addon !== null };
variable.set('Root=1-first;Sampled=0');
out.first = await views();
process.env[name] = 'set by the function';
variable.set('Root=1-second;Sampled=1');
out.afterTheFunctionSetIt = await views();
delete process.env[name];
variable.set('Root=1-third;Sampled=0');
out.afterTheFunctionUnsetIt = await views();
variable.set('R'.repeat(1000));
out.long = (await views()).map((v) => v.length);
variable.set('short again');
out.shortAgain = await views();
const value = (i, sampled) =>
  `Root=1-${i.toString(16).padStart(8, '0')}-${(7919 * i).toString(16).padStart(24, '0')};Sampled=${sampled}`;
let built;
for (let i = 0; i < 200000; i++) built = value(i, 9);  // V8's heap grows to hold this loop's garbage
gc();
const before = process.memoryUsage().rss;
for (let i = 0; i < 200000; i++) variable.set(value(i, 0));
gc();
out.growthKb = Math.round((process.memoryUsage().rss - before) / 1024);
out.last = process.env[name];
console.log(JSON.stringify({ ...out, built: built.length }));
"""


def test_the_trace_id_variable_reaches_every_view_and_costs_no_memory_per_value(tmp_path: Path) -> None:
    if NODE is None:
        pytest.skip("node is not installed")
    if not (RUNTIME_DIR / "nodejs" / "trace_env.node").exists():
        pytest.skip("bin/setup could not build trace_env.node (gcc or Node's headers missing)")
    script = tmp_path / "trace_id.mjs"
    script.write_text(TRACE_ID_SCRIPT)
    done = subprocess.run([NODE, "--expose-gc", str(script), str(RUNTIME_DIR / "nodejs" / "bootstrap.mjs")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["addon"] is True
    assert out["first"] == ["Root=1-first;Sampled=0"] * 3  # process.env, a child, a Worker
    assert out["afterTheFunctionSetIt"] == ["Root=1-second;Sampled=1"] * 3
    assert out["afterTheFunctionUnsetIt"] == ["Root=1-third;Sampled=0"] * 3
    assert out["long"] == [1000] * 3 and out["shortAgain"] == ["short again"] * 3
    assert out["last"] == "Root=1-%08x-%024x;Sampled=0" % (199999, 7919 * 199999)
    # process.env's setenv kept a copy of each distinct value: about 21 MB for these 200,000 (after a
    # loop that only builds them, so that V8's heap has grown already); this, 0.6-0.9 MB.
    assert out["growthKb"] < 8 * 1024, out["growthKb"]
