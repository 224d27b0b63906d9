"""Both bootstraps against a Runtime API scripted byte by byte on a raw socket: the result and
the next GET /next go together (the API may hold the result's 202 until it has an event), and
the connection's life: chunked answers, an answer that ends with the connection,
`Connection: close`, a kept-alive connection the API closed while the handler ran. Every wait has a deadline (socket timeouts)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from firebox.runtimes.api import RUNTIME_DIR, bootstrap_command

from .conftest import NODE, PYTHON, write_files
from .fakeapi import RuntimeProcess, lambda_environment

WAIT_S = 10.0
RUNTIMES = {"python3.11": (PYTHON, "app.handler", {"app.py": "def handler(event, context):\n    return {'got': event}\n"}),
            "nodejs20.x": (NODE, "index.handler", {"index.js": "exports.handler = async (event) => ({ got: event });\n"})}


class Peer:
    """One accepted connection of the runtime: requests read whole, answers written raw."""

    def __init__(self, conn: socket.socket) -> None:
        conn.settimeout(WAIT_S)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn, self.buffer = conn, b""

    def request(self) -> tuple[str, bytes]:
        """(request line, body) of the next request."""
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")), 0)
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return lines[0], body

    def _more(self) -> None:
        chunk = self.conn.recv(65536)
        if not chunk:
            raise AssertionError(f"the runtime closed the connection; unread: {self.buffer!r}")
        self.buffer += chunk

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)


def event(number: int, *, chunked: bool = False, until_close: bool = False) -> bytes:
    body = json.dumps({"n": number}).encode()
    head = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Lambda-Runtime-Aws-Request-Id: 00000000-0000-4000-8000-{number:012d}\r\n"
            "Lambda-Runtime-Deadline-Ms: 99999999999999\r\n"
            "Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:fn\r\n")
    if until_close:  # neither a length nor chunks: the body ends with the connection
        return (head + "\r\n").encode() + body
    if chunked:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:3], body[3:])) + b"0\r\n\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"OK\"}"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        sock.settimeout(WAIT_S)
        yield sock


@pytest.fixture(params=sorted(RUNTIMES))
def runtime(request: pytest.FixtureRequest, listener: socket.socket, tmp_path: Path) -> Iterator[RuntimeProcess]:
    interpreter, handler, files = RUNTIMES[request.param]
    if interpreter is None:
        pytest.skip(f"no interpreter for {request.param}")
    write_files(tmp_path, files)
    api = SimpleNamespace(address="127.0.0.1:%d" % listener.getsockname()[1])
    process = RuntimeProcess(bootstrap_command(request.param, interpreter, runtime_dir=RUNTIME_DIR),
                             lambda_environment(api, tmp_path, handler), tmp_path)  # type: ignore[arg-type]
    yield process
    process.stop()


def accept(listener: socket.socket) -> Peer:
    return Peer(listener.accept()[0])


def test_the_next_get_comes_with_the_result_and_a_held_202_goes_out_with_the_event(
        listener: socket.socket, runtime: RuntimeProcess) -> None:
    peer = accept(listener)
    assert peer.request()[0].endswith("/invocation/next HTTP/1.1")
    peer.send(event(1))
    line, body = peer.request()
    assert "/invocation/00000000-0000-4000-8000-000000000001/response" in line
    assert json.loads(body) == {"got": {"n": 1}}
    # No 202 yet: the runtime has asked for the next event all the same, on the same connection.
    assert peer.request()[0].endswith("/invocation/next HTTP/1.1")
    peer.send(ACCEPTED + event(2))  # the 202, held until now, and the event: one write
    line, body = peer.request()
    assert "000000000002/response" in line and json.loads(body) == {"got": {"n": 2}}


def test_a_chunked_event_cut_into_small_writes(listener: socket.socket, runtime: RuntimeProcess) -> None:
    peer = accept(listener)
    peer.request()
    data = event(7, chunked=True)
    for start in range(0, len(data), 5):
        peer.send(data[start:start + 5])
    line, body = peer.request()
    assert "000000000007/response" in line and json.loads(body) == {"got": {"n": 7}}


def test_after_connection_close_the_next_event_is_asked_for_on_a_new_connection(
        listener: socket.socket, runtime: RuntimeProcess) -> None:
    first = accept(listener)
    first.request()
    first.send(event(1))
    first.request()  # the result
    first.request()  # the GET /next behind it: the API answers the result and hangs up
    first.send(ACCEPTED.replace(b"202 Accepted\r\n", b"202 Accepted\r\nConnection: close\r\n"))
    first.conn.close()
    second = accept(listener)
    assert second.request()[0].endswith("/invocation/next HTTP/1.1")  # an unanswered /next took no event
    second.send(event(2))
    assert "000000000002/response" in second.request()[0]


def test_a_result_is_posted_again_on_a_new_connection_when_the_kept_one_was_closed(
        listener: socket.socket, runtime: RuntimeProcess) -> None:
    first = accept(listener)
    first.request()
    first.send(event(3))
    first.conn.close()  # while the handler runs: its result then finds the connection gone
    second = accept(listener)
    line, body = second.request()
    assert "000000000003/response" in line and json.loads(body) == {"got": {"n": 3}}


def test_an_event_whose_body_ends_with_the_connection(listener: socket.socket, runtime: RuntimeProcess) -> None:
    first = accept(listener)
    first.request()
    first.send(event(5, until_close=True))
    first.conn.close()
    second = accept(listener)  # the result goes on a new connection
    line, body = second.request()
    assert "000000000005/response" in line and json.loads(body) == {"got": {"n": 5}}
