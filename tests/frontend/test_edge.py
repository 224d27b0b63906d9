"""The HTTP edge (`frontend/edge.py`) on a real socket, driven byte by byte.

Each test runs an `HttpEdge` serving a real `FrontendApp` on its own event loop in a thread,
with stand-in handlers: `Invoke` echoes its payload (a payload of `"wait"` waits for the test
to open `gate`; `"stubborn"` too, ignoring cancellation), `ListFunctions` answers `big` bytes. The client side is a plain blocking
socket, so what is checked is what goes over the wire. Nothing sleeps: waits poll a condition
against a deadline, and a blocking read with a timeout is the deadline for the server's part.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pytest

from firebox.arns import Scope
from firebox.frontend.api import Reply, Request, Services
from firebox.frontend.app import FrontendApp
from firebox.frontend.edge import HttpEdge
from firebox.settings import Limits

LIMIT = 1000  # max_request_bytes of the app under test
INVOKE = "/2015-03-31/functions/echo/invocations"
LIST = "/2015-03-31/functions"
T = TypeVar("T")


class Served:
    """An HttpEdge + FrontendApp on a private event loop (uvloop when installed), in a thread."""

    def __init__(self, **edge_options: Any) -> None:
        try:
            import uvloop
        except ImportError:
            self.loop = asyncio.new_event_loop()
        else:
            self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="edge-under-test", daemon=True)
        self._thread.start()
        self.gate = asyncio.Event()  # used on the loop's thread only
        self.seen: list[bytes] = []  # Invoke payloads, in the order handling started
        self.active = 0
        self.max_active = 0
        self.big = b""
        services = Services(registry=cast(Any, None), invoker=cast(Any, None), events=cast(Any, None),
                            logs=cast(Any, None), scope=Scope("123456789012", "us-east-1"), limits=Limits())
        self.app = FrontendApp(services, max_request_bytes=LIMIT,
                               handlers={"Invoke": self._echo, "ListFunctions": self._big})
        self.app.ready = True
        self.edge = HttpEdge(self.app, **edge_options)
        self.port = self.call(self.edge.start("127.0.0.1", 0))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open_gate(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.set)

    def close(self) -> None:
        if not self.edge.stopping:
            self.call(self.edge.stop(1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _echo(self, services: Services, request: Request) -> Reply:
        payload = request.params.get("Payload") or b""
        self.seen.append(payload)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if payload == b'"wait"':
                await self.gate.wait()
            while payload == b'"stubborn"' and not self.gate.is_set():
                with contextlib.suppress(asyncio.CancelledError):  # a handler that ignores cancels
                    await self.gate.wait()
        finally:
            self.active -= 1
        return Reply(payload, 200, {"Content-Type": "application/json", "X-Amz-Executed-Version": "$LATEST"})

    async def _big(self, services: Services, request: Request) -> Reply:
        return Reply(self.big, 200)


@pytest.fixture
def served() -> Iterator[Served]:
    handle = Served()
    yield handle
    handle.close()


# --- a raw HTTP client ------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> Response:
        status_line = self._file.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers: dict[str, str] = {}
        while (line := self._file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            assert name.lower() not in headers, f"{name} twice"
            headers[name.lower()] = value.strip()
        status = int(status_line.split()[1])
        body = self._file.read(int(headers.get("content-length", 0))) if status >= 200 else b""
        return Response(status, headers, body)

    def closed_by_server(self) -> bool:
        """True when the server has closed (EOF or reset) before sending anything more."""
        try:
            return self._file.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self._file.close()
        self.sock.close()


def request(method: str = "POST", path: str = INVOKE, body: bytes | None = b"{}", *, version: str = "1.1",
            headers: dict[str, str] | None = None) -> bytes:
    all_headers = {"Host": "firebox.test"}
    if body is not None:
        all_headers["Content-Length"] = str(len(body))
    all_headers.update(headers or {})
    head = f"{method} {path} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items())
    return head.encode() + b"\r\n" + (body or b"")


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def assert_too_large(response: Response) -> None:
    assert response.status == 413, response
    assert response.headers["x-amzn-errortype"] == "RequestEntityTooLargeException"
    assert response.json() == {"Type": "User",
                               "message": f"Request must be smaller than {LIMIT} bytes for the Invoke operation"}
    assert response.headers["connection"] == "close"


# --- keep-alive and pipelining ----------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(served: Served) -> None:
    client = Client(served.port)
    for i in range(5):
        client.send(request(body=b'{"n": %d}' % i))
        answer = client.response()
        assert (answer.status, answer.body) == (200, b'{"n": %d}' % i)
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-amz-executed-version"] == "$LATEST"
        assert answer.headers["x-amzn-requestid"]
        assert answer.headers["date"].endswith(" GMT")
        assert "connection" not in answer.headers
    client.close()


def test_pipelined_requests_are_answered_in_order_one_at_a_time(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=b'"wait"') + request(body=b'"second"') + request(body=b'"third"'))
    wait_until(lambda: served.active == 1, "the first request to be handled")
    assert served.seen == [b'"wait"'], "a pipelined request started before the one ahead was answered"
    served.open_gate()
    assert [client.response().body for _ in range(3)] == [b'"wait"', b'"second"', b'"third"']
    assert served.max_active == 1
    client.close()


def test_a_deep_pipeline_is_answered_whole_and_in_order(served: Served) -> None:
    """More requests than PIPELINE_DEPTH in one write: reading pauses and resumes; none is lost."""
    client = Client(served.port)
    client.send(b"".join(request(body=b"%d" % i) for i in range(300)))
    assert [client.response().body for _ in range(300)] == [b"%d" % i for i in range(300)]
    client.close()


def test_a_large_answer_then_a_pipelined_one(served: Served) -> None:
    """An answer far over the transport's high-water mark (writing pauses), then the next."""
    served.big = bytes(range(256)) * (32 * 1024)  # 8 MiB
    client = Client(served.port)
    client.send(request("GET", LIST, None) + request(body=b'"after"'))
    big = client.response()
    assert (big.status, big.headers["content-type"], big.body == served.big) == (200, "application/octet-stream", True)
    assert client.response().body == b'"after"'
    client.close()


# --- bodies -----------------------------------------------------------------------------------


def test_chunked_body(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=None, headers={"Transfer-Encoding": "chunked"}))
    for piece in (b'{"a":', b' [1, 2]', b"}"):
        client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    client.send(b"0\r\n\r\n")
    answer = client.response()
    assert (answer.status, answer.body) == (200, b'{"a": [1, 2]}')
    client.send(request(body=b'"next"'))
    assert client.response().body == b'"next"'
    client.close()


def test_expect_100_continue(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=None, headers={"Content-Length": "7", "Expect": "100-continue"}))
    interim = client.response()
    assert interim.status == 100
    client.send(b'"hello"')
    answer = client.response()
    assert (answer.status, answer.body) == (200, b'"hello"')
    client.close()


def test_expect_100_continue_over_the_limit_gets_the_413_instead(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=None, headers={"Content-Length": str(LIMIT + 1), "Expect": "100-continue"}))
    assert_too_large(client.response())
    assert client.closed_by_server()
    client.close()


def test_body_at_the_limit_is_read(served: Served) -> None:
    client = Client(served.port)
    body = b'"' + b"x" * (LIMIT - 2) + b'"'
    client.send(request(body=body))
    answer = client.response()
    assert (answer.status, answer.body) == (200, body)
    client.close()


def test_declared_body_over_the_limit_is_refused_before_it_is_sent(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=None, headers={"Content-Length": str(LIMIT * 1000)}) + b"x" * 500)
    assert_too_large(client.response())
    client.send(b"x" * 10_000)  # the server reads and drops what is still coming, then closes
    assert client.closed_by_server()
    client.close()
    assert served.seen == []
    wait_until(lambda: served.edge.statistics().connections == 0, "the connection to be closed")
    follow_up = Client(served.port)  # and the server goes on
    follow_up.send(request(body=b"1"))
    assert follow_up.response().body == b"1"
    follow_up.close()


def test_chunked_body_over_the_limit_is_refused_at_the_limit(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=None, headers={"Transfer-Encoding": "chunked"}))
    client.send(b"%x\r\n%s\r\n" % (LIMIT + 1, b" " * (LIMIT + 1)))  # no last chunk: it is not needed
    assert_too_large(client.response())
    assert client.closed_by_server()
    client.close()


# --- refusals and closing ---------------------------------------------------------------------


def test_malformed_request_gets_400_and_the_connection_closes(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=b'"fine"') + b"NOT HTTP AT ALL\r\n\r\n")
    assert client.response().body == b'"fine"'  # what came before is answered first
    answer = client.response()
    assert (answer.status, answer.headers["connection"]) == (400, "close")
    assert client.closed_by_server()
    client.close()


def test_oversized_head_gets_431(served: Served) -> None:
    client = Client(served.port)
    client.send(b"GET /health HTTP/1.1\r\nX-Big: ")
    for _ in range(20):
        try:
            client.send(b"a" * 8192)
        except (BrokenPipeError, ConnectionResetError):
            break
    answer = client.response()
    assert (answer.status, answer.headers["connection"]) == (431, "close")
    client.close()


def test_http_1_0_closes_after_its_answer(served: Served) -> None:
    client = Client(served.port)
    client.send(b"GET /health HTTP/1.0\r\n\r\n")
    answer = client.response()
    assert (answer.status, answer.json(), answer.headers["connection"]) == (200, {"status": "ok"}, "close")
    assert client.closed_by_server()
    client.close()


def test_http_1_0_keep_alive_is_honoured(served: Served) -> None:
    client = Client(served.port)
    for _ in range(2):
        client.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        answer = client.response()
        assert (answer.status, answer.headers["connection"]) == (200, "keep-alive")
    client.close()


def test_connection_close(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=b'"last"', headers={"Connection": "close"}))
    answer = client.response()
    assert (answer.body, answer.headers["connection"]) == (b'"last"', "close")
    assert client.closed_by_server()
    client.close()


def test_absolute_form_target(served: Served) -> None:
    client = Client(served.port)
    client.send(request(path=f"http://127.0.0.1:{served.port}{INVOKE}", body=b'"abs"'))
    assert client.response().body == b'"abs"'
    client.close()


def test_idle_connections_are_closed() -> None:
    served = Served(idle_timeout_s=0.05)
    try:
        client = Client(served.port)
        client.send(request(body=b"1"))
        assert client.response().body == b"1"
        assert client.closed_by_server()  # within the sweep interval (1 s) + the timeout
        client.close()
    finally:
        served.close()


# --- graceful stop ----------------------------------------------------------------------------


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # it reached the backlog as the listener closed: ask again
    return False


def test_stop_lets_the_request_in_flight_finish(served: Served) -> None:
    busy, idle = Client(served.port), Client(served.port)
    idle.send(request(body=b"1"))
    assert idle.response().body == b"1"
    busy.send(request(body=b'"wait"'))
    wait_until(lambda: served.active == 1, "the request to be handled")
    stopped = asyncio.run_coroutine_threadsafe(served.edge.stop(10), served.loop)
    wait_until(lambda: _refused(served.port), "the edge to stop accepting")
    assert idle.closed_by_server()
    assert not stopped.done()
    served.open_gate()
    answer = busy.response()
    assert (answer.status, answer.body, answer.headers["connection"]) == (200, b'"wait"', "close")
    assert busy.closed_by_server()
    stopped.result(10)
    busy.close()
    idle.close()


def test_stop_cuts_what_outlives_the_grace_period(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=b'"wait"'))
    wait_until(lambda: served.active == 1, "the request to be handled")
    served.call(served.edge.stop(0.05))
    assert served.active == 0, "the handler was not cancelled"
    assert client.closed_by_server()
    client.close()


def test_a_half_closed_client_still_gets_its_answer(served: Served) -> None:
    """`shutdown(SHUT_WR)` after the request (HTTP/1.0-era clients, `nc -N`): answer, then close."""
    client = Client(served.port)
    client.send(request(body=b'"wait"'))
    client.sock.shutdown(socket.SHUT_WR)
    wait_until(lambda: served.active == 1, "the request to be handled")
    served.open_gate()
    assert client.response().body == b'"wait"'
    assert client.closed_by_server()
    client.close()


def test_a_body_cut_short_by_the_client_is_dropped(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=None, headers={"Content-Length": "100"}) + b'{"partial":')
    client.sock.shutdown(socket.SHUT_WR)
    assert client.closed_by_server()
    client.close()
    wait_until(lambda: served.edge.statistics().connections == 0, "the connection to be forgotten")
    assert served.seen == []


def test_stop_does_not_wait_for_a_handler_that_ignores_its_cancel(served: Served) -> None:
    client = Client(served.port)
    client.send(request(body=b'"stubborn"'))
    wait_until(lambda: served.active == 1, "the request to be handled")
    started = time.monotonic()
    served.call(served.edge.stop(0.05))
    assert time.monotonic() - started < 5
    assert client.closed_by_server()
    client.close()
    served.open_gate()  # let it finish before the loop closes
    wait_until(lambda: served.active == 0, "the stubborn handler to return")


def _edge_tasks(served: Served) -> list[asyncio.Task[Any]]:
    async def tasks() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "_Connection._run"]
    return served.call(tasks())


def test_one_task_answers_a_connection_and_ends_when_the_client_leaves(served: Served) -> None:
    """Between requests the connection's task waits for the next one; it is the same task for
    every request, and it is gone once the client has closed, idle or not."""
    first, second = Client(served.port), Client(served.port)
    for i in range(3):
        for client in (first, second):
            client.send(request(body=b'{"n": %d}' % i))
            assert client.response().body == b'{"n": %d}' % i
        assert len(_edge_tasks(served)) == 2
    first.close()
    wait_until(lambda: len(_edge_tasks(served)) == 1, "the first connection's task to end")
    second.send(request(body=b'"wait"'))
    wait_until(lambda: served.active == 1, "the request to be handled")
    second.close()  # while its request is being handled: the answer has nowhere to go
    served.open_gate()
    wait_until(lambda: not _edge_tasks(served), "the second connection's task to end")
    wait_until(lambda: served.edge.statistics().connections == 0, "the connections to be forgotten")
