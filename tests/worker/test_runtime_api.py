"""The Runtime API protocol (worker/runtimeapi.py) over a real socket: a parked /next is answered
when the event arrives, an event that waits is answered at once, requests on one connection are
answered in order (a runtime may pipeline its result and its next /next)."""

from __future__ import annotations

import asyncio
import socket

from firebox.worker.runtimeapi import Invocation, RuntimeApiProtocol, RuntimeChannel, serve

NEXT = b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n"


def _post(request_id: str, body: bytes) -> bytes:
    return (f"POST /2018-06-01/runtime/invocation/{request_id}/response HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


def _invocation(request_id: str, payload: bytes) -> Invocation:
    return Invocation(request_id=request_id, payload=payload, deadline_ms=1, invoked_function_arn="arn",
                      trace_id="Root=1")


async def _served(channel: RuntimeChannel) -> tuple[asyncio.AbstractServer, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = await serve(channel, sock)
    return server, sock.getsockname()[1]


def test_parked_next_is_answered_on_delivery_and_requests_stay_in_order() -> None:
    async def scenario() -> None:
        channel = RuntimeChannel()
        server, port = await _served(channel)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(NEXT)
            await asyncio.wait_for(channel.ready, 5)  # the first /next: init is over
            first = _invocation("r1", b'{"n": 1}')
            channel.deliver(first)
            status, headers, body = await asyncio.wait_for(_read_response(reader), 5)
            assert (status, headers["lambda-runtime-aws-request-id"], body) == (200, "r1", b'{"n": 1}')

            # Pipelined: the response to r1, then /next. The 202 comes first; the /next waits
            # for r2, which is already queued when it is asked for.
            channel.deliver(_invocation("r2", b"2"))
            writer.write(_post("r1", b'"done"') + NEXT)
            assert (await asyncio.wait_for(_read_response(reader), 5))[::2] == (202, b'{"status":"OK"}')
            assert (await asyncio.wait_for(first.outcome, 5)).payload == b'"done"'
            status, headers, _ = await asyncio.wait_for(_read_response(reader), 5)
            assert (status, headers["lambda-runtime-aws-request-id"]) == (200, "r2")

            # Pipelined with no event waiting: the 202, then (once it comes) the event.
            writer.write(_post("r2", b'"two"') + NEXT)
            second_outcome = channel._in_flight["r2"].outcome
            assert (await asyncio.wait_for(second_outcome, 5)).payload == b'"two"'
            channel.deliver(_invocation("r3", b"3"))
            assert (await asyncio.wait_for(_read_response(reader), 5))[0] == 202
            status, headers, body = await asyncio.wait_for(_read_response(reader), 5)
            assert (status, headers["lambda-runtime-aws-request-id"], body) == (200, "r3", b"3")

            # A lone POST (a runtime that waits for each answer) is answered at once.
            writer.write(_post("unknown", b"1"))
            assert (await asyncio.wait_for(_read_response(reader), 5))[0] == 400
        finally:
            writer.close()
            server.close()

    asyncio.run(scenario())


class _Transport(asyncio.Transport):
    """Records each write: what goes out together, and in which order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _connected(channel: RuntimeChannel) -> tuple[RuntimeApiProtocol, _Transport]:
    protocol, transport = RuntimeApiProtocol(channel), _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def test_a_posts_202_rides_with_the_event_of_the_next_pipelined_behind_it() -> None:
    async def scenario() -> None:
        channel = RuntimeChannel()
        protocol, transport = _connected(channel)
        protocol.data_received(NEXT)
        assert transport.writes == [] and channel.ready.done()
        first = _invocation("r1", b"1")
        channel.deliver(first)  # answered from deliver itself: no task in between
        assert len(transport.writes) == 1 and b"r1" in transport.writes[0]

        protocol.data_received(_post("r1", b'"one"') + NEXT)
        assert first.outcome.done() and first.outcome.result().payload == b'"one"'
        assert transport.writes[1:] == []  # the 202 waits for the event of the pipelined /next

        channel.deliver(_invocation("r2", b"2"))
        assert len(transport.writes) == 2  # one write: the 202, then the event
        assert transport.writes[1].startswith(b"HTTP/1.1 202") and b"r2" in transport.writes[1]

        # A POST with nothing behind it is answered at once.
        protocol.data_received(_post("r2", b'"two"'))
        assert transport.writes[2].startswith(b"HTTP/1.1 202")

    asyncio.run(scenario())


def test_an_event_is_never_held_behind_a_request_pipelined_after_its_next() -> None:
    async def scenario() -> None:
        channel = RuntimeChannel()
        protocol, transport = _connected(channel)
        channel.deliver(_invocation("r1", b"1"))  # waiting before it is asked for
        protocol.data_received(NEXT + NEXT)
        assert len(transport.writes) == 1 and b"r1" in transport.writes[0]  # the second /next waits
        channel.deliver(_invocation("r2", b"2"))
        assert len(transport.writes) == 2 and b"r2" in transport.writes[1]

    asyncio.run(scenario())


def test_a_parked_next_whose_connection_closed_takes_no_event() -> None:
    async def scenario() -> None:
        channel = RuntimeChannel()
        gone, gone_transport = _connected(channel)
        gone.data_received(NEXT)
        gone_transport.closed = True
        gone.connection_lost(None)
        protocol, transport = _connected(channel)
        channel.deliver(_invocation("r1", b"1"))
        assert gone_transport.writes == [] and transport.writes == []
        protocol.data_received(NEXT)  # a runtime that reconnected gets the event
        assert len(transport.writes) == 1 and b"r1" in transport.writes[0]

    asyncio.run(scenario())
