"""GET /_firebox/hops on a real server: with FIREBOX_TRACE_HOPS=1, every synchronous invocation
leaves one whole trace (asynchronous ones none), and each hop has its timings; without it the
route answers an error and nothing is traced."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from firebox import hops

from .engine_fixtures import invoke, ok_json, python_function
from .helpers import FireboxServer, lambda_client, wait_for

SOURCE = "def handler(event, context):\n    return {'n': event['n']}\n"


def _hops(server: FireboxServer, after: int = 0) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.endpoint}/_firebox/hops?after={after}", timeout=10) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def test_each_synchronous_invocation_leaves_one_whole_trace(server_factory: Any) -> None:
    server = server_factory(env={"FIREBOX_TRACE_HOPS": "1"})
    lam = lambda_client(server.endpoint)
    name = python_function(lam, SOURCE, prefix="hops")
    assert ok_json(invoke(lam, name, {"n": 0})) == {"n": 0}  # the cold start: traced too
    last = _hops(server)["last"]
    assert last == 1
    for n in range(1, 4):
        assert ok_json(invoke(lam, name, {"n": n})) == {"n": n}
    lam.invoke(FunctionName=name, InvocationType="Event", Payload=b'{"n": 9}')
    lam.list_functions()
    wait_for(lambda: server_events_done(server, name), deadline_s=30, what="the Event invocation to run")
    seen = _hops(server, after=last)
    assert (seen["traces"], seen["last"]) == (3, 4)  # neither the Event invoke nor ListFunctions
    assert list(seen["hops"]) == list(hops.MARKS[1:])
    for row in seen["hops"].values():
        assert 0 <= row["p50_us"] <= row["p99_us"]
    # The sandbox's part is its runtime and handler: a real round trip, not a zero.
    assert seen["hops"]["answered"]["p50_us"] > 0
    assert seen["server"]["p50_us"] >= seen["hops"]["answered"]["p50_us"]


def server_events_done(server: FireboxServer, name: str) -> bool:
    with urllib.request.urlopen(f"{server.endpoint}/_firebox/events", timeout=10) as answer:
        return json.loads(answer.read()).get(name, {}).get("succeeded", 0) == 1  # type: ignore[no-any-return]


def test_hop_timings_are_off_unless_asked_for(server: FireboxServer) -> None:
    try:
        urllib.request.urlopen(f"{server.endpoint}/_firebox/hops", timeout=10)
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
        assert exc.code >= 400
        assert "FIREBOX_TRACE_HOPS=1" in body.get("message", body.get("Message", ""))
    else:
        raise AssertionError("/_firebox/hops answered while tracing is off")


def test_a_bad_count_is_refused(server_factory: Any) -> None:
    server = server_factory(env={"FIREBOX_TRACE_HOPS": "1"})
    try:
        urllib.request.urlopen(f"{server.endpoint}/_firebox/hops?after=-1", timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 400
        assert "after must be a trace count" in json.loads(exc.read())["message"]
    else:
        raise AssertionError("a negative count was accepted")
