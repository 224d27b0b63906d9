"""The Runtime API protocol (worker/runtimeapi.py) as different runtimes speak it, over an
in-memory transport: our bootstraps (pipelined POST + GET /next), curl (chunked bodies), Go and
Rust clients (other header casing, query strings), broken clients (unknown routes, bad ids,
malformed requests, bodies over the limit). Every conversation is fed whole, byte by byte, and
cut at a few other places: what the server writes and what the channel gets must not depend on
how the bytes arrived."""

from __future__ import annotations

import asyncio
import json

import pytest

from firebox.worker.runtimeapi import MAX_RESPONSE_BYTES, Invocation, RuntimeApiProtocol, RuntimeChannel, RuntimeOutcome

API = b"/2018-06-01/runtime"
NEXT = b"GET " + API + b"/invocation/next HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nUser-Agent: firebox-python/3.11.7\r\n\r\n"


def _post(path: bytes, body: bytes, headers: bytes = b"") -> bytes:
    return (b"POST " + API + path + b" HTTP/1.1\r\nHost: x\r\n" + headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _chunked(path: bytes, chunks: list[bytes], headers: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    return (b"POST " + API + path + b" HTTP/1.1\r\nhost: x\r\nuser-agent: curl/8.5.0\r\naccept: */*\r\n" + headers
            + b"transfer-encoding: chunked\r\n\r\n" + body)


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP responses in `data`, in order (status, lower-cased headers, body)."""
    found = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
        length = int(headers["content-length"])
        found.append((int(lines[0].split()[1]), headers, data[:length]))
        data = data[length:]
    return found


def _splits(data: bytes) -> list[list[bytes]]:
    """`data` whole, byte by byte (short data only), and cut at a few places."""
    ways = [[data]]
    if len(data) < 4096:
        ways.append([data[i:i + 1] for i in range(len(data))])
    for cut in (1, 7, len(data) // 3, len(data) // 2, len(data) - 5):
        if 0 < cut < len(data):
            ways.append([data[:cut], data[cut:]])
    return ways


def _pair(outcome: RuntimeOutcome) -> tuple[bytes, str | None]:
    return outcome.payload, outcome.error_type


def _converse(steps: list[tuple[str, object]]) -> list[tuple[list[bytes], bool, list[object]]]:
    """Run one conversation, for each way of cutting the bytes the runtime sends: ("send",
    bytes) feeds the protocol, ("deliver", request id) hands it an invocation. Returns, per way,
    the writes (one entry per transport write), whether the connection was closed, and what the
    channel saw (outcomes by request id, the init error)."""
    async def run(cut: int) -> tuple[list[bytes], bool, list[object]]:
        channel = RuntimeChannel()
        protocol = RuntimeApiProtocol(channel)
        transport = _Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        invocations: list[Invocation] = []
        for kind, value in steps:
            if kind == "deliver":
                assert isinstance(value, str)
                invocation = Invocation(value, b'{"n":1}', 1700000000000, "arn:aws:lambda:us-east-1:0:function:f", "Root=1-x")
                invocations.append(invocation)
                channel.deliver(invocation)
            else:
                assert isinstance(value, bytes)
                ways = _splits(value)
                for piece in ways[min(cut, len(ways) - 1)]:
                    if transport.closed:
                        break
                    protocol.data_received(piece)
        await asyncio.sleep(0)
        seen: list[object] = [(i.request_id, _pair(i.outcome.result()) if i.outcome.done() else None)
                              for i in invocations]
        seen.append(_pair(channel.init_error.result()) if channel.init_error.done() else None)
        seen.append(channel.ready.done())
        return transport.writes, transport.closed, seen

    return [asyncio.run(run(cut)) for cut in range(7)]


def _one(steps: list[tuple[str, object]]) -> tuple[list[bytes], bool, list[object]]:
    """The conversation's result, the same however the bytes were cut (writes compared joined:
    a cut can only change which writes carry the answers, not the answers; a conversation ends
    with a delivery, which writes any answer still held for a pipelined /next)."""
    results = _converse(steps)
    first_writes, closed, seen = results[0]
    for writes, other_closed, other_seen in results[1:]:
        assert b"".join(writes) == b"".join(first_writes)
        assert (other_closed, other_seen) == (closed, seen)
    return first_writes, closed, seen


def _event_headers(request_id: str) -> dict[str, str]:
    return {"content-type": "application/json", "content-length": "7", "lambda-runtime-aws-request-id": request_id,
            "lambda-runtime-deadline-ms": "1700000000000",
            "lambda-runtime-invoked-function-arn": "arn:aws:lambda:us-east-1:0:function:f",
            "lambda-runtime-trace-id": "Root=1-x"}


ACCEPTED = (202, {"content-type": "application/json", "content-length": "15"}, b'{"status":"OK"}')


def _error(status: int, error_type: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
    return status, {"content-type": "application/json", "content-length": str(len(body))}, body


def test_bootstrap_pipelines_its_result_and_next_poll() -> None:
    writes, closed, seen = _one([
        ("send", NEXT), ("deliver", "r1"),
        ("send", _post(b"/invocation/r1/response", b'"one"', b"Content-Type: application/json\r\n") + NEXT),
        ("deliver", "r2"),
        ("send", _post(b"/invocation/r2/response", b'"two"') + NEXT),
        ("deliver", "r3"),
    ])
    assert [_responses(w) for w in writes] == [
        [(200, _event_headers("r1"), b'{"n":1}')],
        [ACCEPTED, (200, _event_headers("r2"), b'{"n":1}')],  # the 202 rides with the next event
        [ACCEPTED, (200, _event_headers("r3"), b'{"n":1}')],
    ]
    assert not closed
    assert seen == [("r1", (b'"one"', None)), ("r2", (b'"two"', None)), ("r3", None), None, True]


@pytest.mark.parametrize("header", [b"Lambda-Runtime-Function-Error-Type", b"lambda-runtime-function-error-type",
                                    b"LAMBDA-RUNTIME-FUNCTION-ERROR-TYPE"])
def test_curl_chunked_bodies_and_header_casing(header: bytes) -> None:
    writes, closed, seen = _one([
        ("deliver", "a"), ("deliver", "b"), ("deliver", "c"),
        ("send", NEXT),
        ("send", _chunked(b"/invocation/a/response", [b'{"long":', b' "result"', b"}"])),
        ("send", NEXT),
        ("send", _chunked(b"/invocation/b/error", [b'{"errorType":"X"}'], header + b": Custom.Failure\r\n")),
        ("send", NEXT),
        ("send", _post(b"/invocation/c/error", b"{}")),
    ])
    assert [r[0] for w in writes for r in _responses(w)] == [200, 202, 200, 202, 200, 202]
    assert seen == [("a", (b'{"long": "result"}', None)), ("b", (b'{"errorType":"X"}', "Custom.Failure")),
                    ("c", (b"{}", "Unhandled")), None, True]
    assert not closed


def test_query_strings_and_escapes_in_paths() -> None:
    request_id = "r%C3%A9-1~x"  # as it is in the path: no unquoting
    writes, _, seen = _one([
        ("send", b"GET " + API + b"/invocation/next?poll=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("deliver", request_id),
        ("send", _post(b"/invocation/r%C3%A9-1~x/response?x=/y", b"ok")),
    ])
    assert [_responses(w) for w in writes] == [[(200, _event_headers(request_id), b'{"n":1}')], [ACCEPTED]]
    assert seen[0] == (request_id, (b"ok", None))


def test_init_error_with_and_without_its_type() -> None:
    _, _, seen = _one([("send", _post(b"/init/error", b'{"errorMessage":"boom"}',
                                      b"Lambda-Runtime-Function-Error-Type: Runtime.ImportModuleError\r\n"))])
    assert seen == [(b'{"errorMessage":"boom"}', "Runtime.ImportModuleError"), False]
    writes, _, seen = _one([("send", _post(b"/init/error", b"{}"))])
    assert _responses(b"".join(writes)) == [ACCEPTED]
    assert seen == [(b"{}", "Runtime.Unknown"), False]


def test_wrong_routes_ids_and_methods() -> None:
    writes, closed, seen = _one([
        ("send", b"GET /2018-06-01/runtime/nothing HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("send", b"PUT " + API + b"/invocation/next HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
        ("send", b"GET " + API + b"/invocation/r1/response HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("send", _post(b"/invocation/next", b"")),
        ("send", _post(b"/invocation//response", b"")),
        ("send", _post(b"/invocation/a/b/response", b"")),
        ("send", _post(b"/invocation/unknown/response", b"{}")),
        ("send", b"GET " + API + b"/firebox/specialize HTTP/1.1\r\nHost: x\r\n\r\n"),  # not a stem cell
        ("send", _post(b"/invocation/r1/responsex", b"")),
    ])
    route = "No Runtime API route for {} {}"
    assert _responses(b"".join(writes)) == [
        _error(404, "InvalidRequest", route.format("GET", "/2018-06-01/runtime/nothing")),
        _error(404, "InvalidRequest", route.format("PUT", "/2018-06-01/runtime/invocation/next")),
        _error(404, "InvalidRequest", route.format("GET", "/2018-06-01/runtime/invocation/r1/response")),
        _error(404, "InvalidRequest", route.format("POST", "/2018-06-01/runtime/invocation/next")),
        _error(404, "InvalidRequest", route.format("POST", "/2018-06-01/runtime/invocation//response")),
        _error(404, "InvalidRequest", route.format("POST", "/2018-06-01/runtime/invocation/a/b/response")),
        _error(400, "InvalidRequestID", "Invalid request ID"),
        _error(404, "InvalidRequest", route.format("GET", "/2018-06-01/runtime/firebox/specialize")),
        _error(404, "InvalidRequest", route.format("POST", "/2018-06-01/runtime/invocation/r1/responsex")),
    ]
    assert not closed and seen == [None, False]


def test_malformed_request_is_answered_400_and_closed() -> None:
    writes, closed, _ = _converse([("send", b"GARBAGE\r\n\r\n")])[0]
    assert _responses(b"".join(writes)) == [_error(400, "InvalidRequest", "Malformed HTTP request")]
    assert closed


def test_a_response_over_the_limit_is_refused_and_ends_the_invocation() -> None:
    body = b"x" * (MAX_RESPONSE_BYTES + 1)
    writes, _, seen = _one([("send", NEXT), ("deliver", "big"), ("send", _post(b"/invocation/big/response", body) + NEXT),
                             ("deliver", "next")])
    answers = [r for w in writes for r in _responses(w)]
    assert [a[0] for a in answers] == [200, 413, 200]
    assert answers[1] == _error(413, "RequestEntityTooLarge", f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).")
    payload, error_type = seen[0][1]  # type: ignore[index]
    assert error_type == "Function.ResponseSizeTooLarge"
    assert json.loads(payload)["errorType"] == "Function.ResponseSizeTooLarge"


def test_two_polls_pipelined_on_one_connection_take_one_event_each() -> None:
    writes, _, _ = _one([("send", NEXT + NEXT), ("deliver", "a"), ("deliver", "b")])
    assert [r[1]["lambda-runtime-aws-request-id"] for w in writes for r in _responses(w)] == ["a", "b"]
