"""bench/common.py's HTTP client, which every throughput figure is measured with: against a real
server on loopback that answers in pieces (a head split from its body, a chunked body split
inside a chunk), over one keep-alive connection."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench_common() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _bench_common()

# What the server below answers, request after request, and in how many writes (with a pause
# between them, so that the client sees each piece in its own read).
ANSWERS = [
    [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n", b'{"hello":"world"}'],
    [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n9\r\n{\"hello\":",
     b"\r\n8\r\n\"world\"}\r\n0\r\n", b"\r\n"],
    [b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nX-Amzn-RequestId: abc\r\n\r\n"],
    [b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"],
]


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        for pieces in ANSWERS:
            await reader.readuntil(b"\r\n\r\n")
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client gave up (a failed test)
    finally:
        writer.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_answers_in_pieces_are_read_whole_one_after_another(loop_kind: str) -> None:
    async def scenario() -> None:
        listening = socket.socket()  # bound here: uvloop would resolve the address on threads
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        server = await asyncio.start_server(_serve, sock=listening)
        port = listening.getsockname()[1]
        conn = await common.Connection.open("127.0.0.1", port)
        try:
            assert await conn.post("/a", b"{}") == (200, b'{"hello":"world"}')
            status, headers, body = await conn.exchange("/b", b"", method="GET")
            assert (status, body) == (200, b'{"hello":"world"}')
            assert headers["transfer-encoding"] == "chunked"
            status, headers, body = await conn.exchange("/c", b"{}", {"X-Amz-Invocation-Type": "Event"})
            assert (status, headers["x-amzn-requestid"], body) == (202, "abc", b"")
            with pytest.raises(OSError, match="404"):
                await conn.get_json("/d")
            with pytest.raises(ConnectionError):  # the server has closed the connection
                await asyncio.wait_for(conn.post("/e", b"{}"), timeout=10)
        finally:
            await conn.close()
            server.close()
            await server.wait_closed()

    async def bounded() -> bool:  # a response the client never completes fails, not hangs
        try:
            await asyncio.wait_for(scenario(), timeout=30)
        except TimeoutError:
            return False
        return True

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        completed = uvloop.run(bounded())
    else:
        completed = asyncio.run(bounded())
    assert completed, "the client did not complete a response within 30 s"

