"""Firebox's HTTP/1.1 server: a callback-style `asyncio.Protocol` over httptools' parser.

    bytes -> httptools (callbacks) -> the connection's queue of requests, in order
          -> the connection's task, one request at a time: `await app.handle(...)`
          -> one write of head + body

Why our own server: the invoke hot path is a small request, a hop to a sandbox, a small answer.
Through uvicorn, the ASGI plumbing around each request (scope dict, receive/send messages,
RequestResponseCycle, ProxyHeadersMiddleware) cost a significant share of the server's core; a
callback protocol carried about 4x the invokes/s of the same path through an ASGI framework. So
the edge calls the app's plain coroutine (`FrontendApp.handle`) with what it parsed, and writes
the `HttpResponse` it gets back; no framework in between.

What a connection does, and why:

- **Keep-alive and pipelining.** Requests are answered in order, one at a time: a pipelined
  request is handled only after the one before it was answered, so it sees that one's effects
  (a CreateFunction, then an Invoke). HTTP/1.0 closes after each answer unless it asked for
  keep-alive; `Connection: close` closes after its answer.
- **Bodies.** httptools decodes chunked bodies. A body over the app's `max_request_bytes` is
  not kept: at the first byte over (or at once, when `Content-Length` declares too much) the
  app is called with `body=None` and answers its 413, and the connection closes. `Expect:
  100-continue` is answered when the request is next in line, unless the declared length is
  already over the limit: then the 413 is the answer.
- **Closing.** Closing while the client may still be sending (a refused body, a malformed
  request) would make the kernel answer its bytes with a reset, which can destroy our response
  in the client's receive buffer before it is read. So the edge half-closes (FIN after the
  answer) and reads and drops until the client closes, at most `LINGER_S` (nginx's
  lingering close).
- **Flow control.** Reading pauses while too many requests (or bytes of them) wait behind the
  one being answered, and while the transport's write buffer is over its high-water mark (the
  client is not reading our answers): nothing a client sends is buffered without bound.
- **Idle connections** close after `IDLE_TIMEOUT_S` without a byte either way and with no
  request being handled. 60 s, not uvicorn's 5 s: boto3, the AWS CLI and SDKs pool connections
  and reuse them after pauses, and a request that races the server's close of an idle
  connection fails with a reset (Invoke is not safely retried); 60 s is the idle timeout of
  AWS's own load balancers, which these clients already live with. An idle connection costs a
  file descriptor, a small object and its task, parked until its next request.
- **Graceful stop.** `stop(grace_s)` stops accepting, closes idle connections, lets requests
  being received or handled finish (their answer says `Connection: close`), and after
  `grace_s` cancels what is left and aborts those connections.

Known caveats:
- A request's headers are a dict with lower-case names: a repeated header keeps its last value
  (as the ASGI-based app did). Trailers of chunked bodies are ignored.
- A slow client that sends a byte now and then keeps its connection (there is no deadline for a
  whole request); the count of such connections is bounded only by the file descriptor limit.
- An HTTP upgrade (`Upgrade: h2c`, `CONNECT`) is declined: the request is answered as
  HTTP/1.1 and the connection closes; one that carries a body is refused with 400, because
  httptools hands an upgrade request's body over as upgraded bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from itertools import islice
from time import perf_counter_ns, time
from typing import Protocol, cast

import httptools

from firebox import hops
from firebox.frontend.responses import HttpResponse

log = logging.getLogger("firebox.edge")

IDLE_TIMEOUT_S = 60.0
LINGER_S = 5.0
SWEEP_INTERVAL_S = 1.0  # how often idle and lingering connections are looked at
CANCEL_WAIT_S = 1.0  # after the grace period, how long cancelled handlers get to unwind
MAX_HEAD_BYTES = 64 * 1024  # request line + headers; httptools itself would buffer any size
PIPELINE_DEPTH = 16  # requests waiting behind the one being answered before reading pauses
PIPELINE_BYTES = 1 << 20  # ... or bytes of their bodies
_WRITE_APART = 64 * 1024  # bodies this large go out beside the head rather than copied into it

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY = frozenset({204, 304})  # and 1xx: no Content-Length, no body (RFC 9110)

# Header names and methods as clients usually spell them -> the str the app gets: one look-up
# instead of decoding (and lower-casing) each; any other spelling is decoded as before.
_COMMON_HEADERS = (
    "host", "content-length", "content-type", "user-agent", "accept", "accept-encoding", "connection",
    "expect", "transfer-encoding", "authorization", "x-amz-date", "x-amz-security-token",
    "x-amz-content-sha256", "amz-sdk-invocation-id", "amz-sdk-request", "x-amz-target",
    "x-amz-invocation-type", "x-amz-log-type", "x-amz-client-context", "x-amzn-trace-id",
)
_HEADER_NAMES = {
    spelling.encode(): spelling.lower()
    for name in _COMMON_HEADERS
    for spelling in (name, "-".join(part.capitalize() for part in name.split("-")))
} | {b"X-Amz-Content-SHA256": "x-amz-content-sha256"}
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class App(Protocol):
    """What the edge serves (`FrontendApp`)."""

    @property
    def max_request_bytes(self) -> int: ...

    async def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None, server: tuple[str, int]
    ) -> HttpResponse: ...


@dataclass(frozen=True)
class EdgeStatistics:
    connections: int  # open, or closed with a request still being handled
    handling: int  # requests being handled now


def _plain(status: int, text: str) -> bytes:
    """A whole response of the edge's own (malformed request, oversized head): it closes."""
    body = text.encode()
    return (_STATUS_LINES[status] + b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


_INTERNAL_ERROR = HttpResponse(500, b"content-type: text/plain; charset=utf-8\r\n", b"Internal Server Error")


class _Date:
    """The `Date` header line, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time())
        if now != self._second:
            self._second = now
            self._line = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._line


class _Request:
    """One request of a connection, from its request line to its answer."""

    __slots__ = ("body", "canned", "dropping", "expect_continue", "headers", "http10", "keep_alive",
                 "method", "ready", "received_ns", "size", "target", "too_large")

    def __init__(self, headers: dict[str, str]) -> None:
        self.method = ""
        self.target = b""
        self.headers = headers  # lower-case names (filled by the parser's callbacks)
        self.body: list[bytes] = []
        self.size = 0
        self.ready = False  # complete, or refused: it can be answered
        self.keep_alive = False
        self.http10 = False
        self.expect_continue = False  # a `100 Continue` is owed once it is next in line
        self.too_large = False
        self.dropping = False  # its body bytes are not kept (too large, or never to be answered)
        self.canned: bytes | None = None  # an answer of the edge's own instead of the app's
        self.received_ns = 0  # when its first byte was parsed, if hops are traced (firebox.hops)


class HttpEdge:
    """Serves `app` over HTTP/1.1 on one listening socket; see the module docstring."""

    def __init__(self, app: App, *, idle_timeout_s: float = IDLE_TIMEOUT_S, linger_s: float = LINGER_S) -> None:
        self.app = app
        self.idle_timeout_s = idle_timeout_s
        self.linger_s = linger_s
        self.stopping = False
        self.date = _Date()
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_gone: asyncio.Event | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self, loop), host, port, backlog=2048)
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; let what is in flight finish for up to `grace_s`; then cut the rest."""
        assert self._server is not None, "stop() before start()"
        self.stopping = True
        self._server.close()
        self._all_gone = asyncio.Event()
        for conn in list(self._connections):
            conn.shutdown()
        if self._connections:
            try:
                await asyncio.wait_for(self._all_gone.wait(), grace_s)
            except TimeoutError:
                log.warning("%d connection(s) still busy after %.0f s: closing them", len(self._connections), grace_s)
                tasks = [task for conn in list(self._connections) if (task := conn.abort()) is not None]
                if tasks:  # a handler may take a moment to unwind; one that ignores the cancel is left
                    await asyncio.wait(tasks, timeout=CANCEL_WAIT_S)
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._server.wait_closed()

    def statistics(self) -> EdgeStatistics:
        return EdgeStatistics(len(self._connections), sum(1 for c in self._connections if c.handling))

    def opened(self, conn: _Connection) -> None:
        self._connections.add(conn)

    def forget(self, conn: _Connection) -> None:
        """`conn` is closed and no request of it is being handled."""
        self._connections.discard(conn)
        if self._all_gone is not None and not self._connections:
            self._all_gone.set()

    def _sweep(self) -> None:
        now = asyncio.get_running_loop().time()
        for conn in list(self._connections):
            conn.check_timeouts(now)
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL_S, self._sweep)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests into a queue, answers them in order.

    httptools calls `on_*` from inside `feed_data`; they only record what was parsed. Answers
    are started after `feed_data` returns (`_next`), so no callback ever runs the app."""

    def __init__(self, edge: HttpEdge, loop: asyncio.AbstractEventLoop) -> None:
        self._edge = edge
        self._app = edge.app
        self._limit = edge.app.max_request_bytes
        self._loop = loop
        self._transport = cast(asyncio.Transport, None)  # set by connection_made
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._sockname = ("", 0)
        self._queue: deque[_Request] = deque()  # head: being answered (or its body is arriving)
        self._current = _Request({})  # the request being parsed
        self._headers: dict[str, str] = {}  # where on_header puts the current request's headers
        # One task answers the connection's requests in turn, parked on `_wake` between them:
        # waking it costs less than a task per request (created, registered in asyncio's
        # WeakSet of tasks, unregistered: ~4k instructions).
        self._runner: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None  # set while the runner waits for a request
        self._handling = False  # the queue's head is being answered
        self._parsing = True  # False once no further request will be answered: bytes are dropped
        self._in_head = False  # between a request's first byte and the end of its headers
        self._heads_begun = 0
        self._head_bytes = 0
        self._read_paused = False
        self._write_paused = False
        self._lingering = False
        self._linger_until = 0.0
        self._closed = False
        self._last_active = loop.time()

    @property
    def handling(self) -> bool:
        return self._handling

    # --- transport events ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple):
            self._sockname = (str(sockname[0]), int(sockname[1]))
        self._edge.opened(self)
        if self._edge.stopping:
            self._close(linger=False)

    def data_received(self, data: bytes) -> None:
        self._last_active = self._loop.time()
        if not self._parsing or self._parser is None:
            return  # closing: what the client still sends is read and dropped
        begun = self._heads_begun
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._decline_upgrade()
        except httptools.HttpParserError:
            self._refuse(400, "Malformed HTTP request.")
            return
        if self._in_head and begun == self._heads_begun:
            # The whole chunk belonged to one unfinished head (httptools would buffer it all).
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, "Request header fields too large.")
                return
        if self._read_paused or self._write_paused or len(self._queue) > 1:
            self._flow()
        if not self._handling:
            self._next()

    def eof_received(self) -> bool:
        """The client will send no more. Answer what it asked first (return True keeps our side
        open); with nothing to answer, returning False lets the transport close."""
        self._parsing = False
        if self._queue and not self._queue[-1].ready:
            self._queue.pop()  # its body will never come (and a request not ready has no handler)
        return bool(self._queue) and not self._lingering

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._parser = None  # it holds our bound methods: break the cycle
        if not self._handling:
            self._edge.forget(self)
            if self._runner is not None:
                self._runner.cancel()  # parked, waiting for a request that will not come
        # else: the handler goes on (a request is not cut short because its client left);
        # _answer forgets the connection when it returns, and the runner ends.

    def pause_writing(self) -> None:
        self._write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last_active = self._loop.time()
        self._flow()
        self._next()

    # --- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = {}
        self._current = _Request(self._headers)
        if hops.tracing:
            self._current.received_ns = perf_counter_ns()
        self._in_head = True
        self._heads_begun += 1
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[_HEADER_NAMES.get(name) or name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        req = self._current
        parser = self._parser
        assert parser is not None
        self._in_head = False
        self._headers = {}  # trailers of a chunked body, if any, land here and are ignored
        method = parser.get_method()
        req.method = _METHODS.get(method) or method.decode("ascii")
        if not self._parsing or self._edge.stopping:
            req.dropping = True  # after a close was decided: never answered
            self._parsing = False
            return
        req.keep_alive = parser.should_keep_alive()
        req.http10 = parser.get_http_version() == "1.0"
        self._queue.append(req)
        declared = req.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            self._refuse_body(req)
        elif not req.http10 and req.headers.get("expect", "").lower() == "100-continue":
            req.expect_continue = True

    def on_body(self, chunk: bytes) -> None:
        req = self._current
        if req.dropping:
            return
        req.size += len(chunk)
        if req.size > self._limit:
            self._refuse_body(req)
        else:
            req.body.append(chunk)

    def on_message_complete(self) -> None:
        req = self._current
        if not req.dropping:
            req.ready = True
        if not req.keep_alive:
            self._parsing = False

    # --- deciding ------------------------------------------------------------------------

    def _refuse_body(self, req: _Request) -> None:
        """Over the app's limit: keep none of it, let the app answer (its 413) now, then close."""
        req.too_large = req.dropping = req.ready = True
        req.keep_alive = req.expect_continue = False
        req.body.clear()
        self._parsing = False

    def _refuse(self, status: int, text: str) -> None:
        """Not HTTP we accept: after the answers already owed, answer `status` and close."""
        self._parsing = False
        if self._queue and not self._queue[-1].ready:
            self._queue.pop()  # its head arrived; its body never will
        refusal = _Request({})
        refusal.canned = _plain(status, text)
        refusal.ready = True
        self._queue.append(refusal)
        self._next()

    def _decline_upgrade(self) -> None:
        """httptools stopped at an upgrade: answer the request as HTTP/1.1, then close (what
        follows it is not HTTP/1.1). Its body, if it has one, was not parsed: refuse it."""
        self._parsing = False
        if not self._queue:
            return
        req = self._queue[-1]
        req.keep_alive = False
        if req.headers.get("transfer-encoding") or req.headers.get("content-length", "0") != "0":
            self._queue.pop()
            self._refuse(400, "HTTP upgrade with a request body is not supported.")

    def _flow(self) -> None:
        """Read only while answers keep up (see the module docstring: flow control)."""
        queue = self._queue
        backlog = len(queue) > 1 and (
            len(queue) > PIPELINE_DEPTH or sum(r.size for r in islice(queue, 1, None)) > PIPELINE_BYTES
        )
        pause = (self._write_paused or backlog) and not self._lingering
        if pause != self._read_paused and not self._closed:
            self._read_paused = pause
            if pause:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    # --- answering -----------------------------------------------------------------------

    def _next(self) -> None:
        """Start answering the head of the queue if it can be answered now: one at a time."""
        if self._handling or not self._queue or self._write_paused or self._closed or self._lingering:
            return
        req = self._queue[0]
        if req.canned is not None:
            self._queue.clear()
            self._transport.write(req.canned)
            self._close(linger=True)
        elif req.ready:
            self._handling = True
            if self._wake is not None:  # the runner waits for it
                self._wake.set_result(None)
                self._wake = None
            elif self._runner is None or self._runner.done():
                self._runner = self._loop.create_task(self._run())
            # else: the runner is finishing the answer before this one; it takes this one next
        elif req.expect_continue:
            req.expect_continue = False
            self._transport.write(_CONTINUE)

    async def _run(self) -> None:
        """Answer the head of the queue whenever `_next` says so, until the connection closes
        (connection_lost cancels it while it waits)."""
        while True:
            if self._handling:
                await self._answer(self._queue[0])
            elif self._closed:
                return
            else:
                self._wake = self._loop.create_future()
                await self._wake

    async def _answer(self, req: _Request) -> None:
        # (Traced only when hops are on, which the time of its first byte says: no call otherwise.)
        trace = hops.start(req.received_ns) if req.received_ns else None
        try:
            response = await self._app.handle(
                req.method, _target(req.target), req.headers,
                None if req.too_large else b"".join(req.body), self._sockname,
            )
        except Exception:  # the app answers its own errors; this is a bug of ours
            log.exception("unhandled error answering %s %r", req.method, req.target[:200])
            response, req.keep_alive = _INTERNAL_ERROR, False
        finally:
            self._handling = False
            if self._closed:
                self._edge.forget(self)
        if self._closed:
            return  # the client left; the answer has nowhere to go
        keep_alive = req.keep_alive and not self._edge.stopping
        self._write(req, response, keep_alive)
        if trace is not None:
            hops.finish(trace)
        self._queue.popleft()
        self._last_active = self._loop.time()
        if not keep_alive:
            self._close(linger=req.too_large)
        elif not self._queue and not self._parsing:
            self._close(linger=False)  # the client half-closed, and everything is answered
        else:
            if self._read_paused:
                self._flow()
            self._next()

    def _write(self, req: _Request, response: HttpResponse, keep_alive: bool) -> None:
        """Status line, headers and body in one write (one system call)."""
        status, body = response.status, response.body
        head = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, response.head]
        if status < 200 or status in _NO_BODY:
            body = b""
        else:
            head.append(b"content-length: %d\r\n" % len(body))
            if req.method == "HEAD":
                body = b""
        head.append(self._edge.date.line())
        if not keep_alive:
            head.append(b"connection: close\r\n")
        elif req.http10:
            head.append(b"connection: keep-alive\r\n")
        head.append(b"\r\n")
        if len(body) < _WRITE_APART:
            head.append(body)
            self._transport.write(b"".join(head))
        else:
            self._transport.writelines([b"".join(head), body])  # one writev, no copy of the body

    # --- closing -------------------------------------------------------------------------

    def _close(self, *, linger: bool) -> None:
        """Close once what was written is sent. `linger`: the client may still be sending;
        half-close and drain instead (module docstring: closing)."""
        self._parsing = False
        if self._closed or self._lingering:
            return
        if linger and self._transport.can_write_eof():
            self._transport.write_eof()
            self._lingering = True
            self._linger_until = self._loop.time() + self._edge.linger_s
            if self._read_paused:
                self._read_paused = False
                self._transport.resume_reading()
        else:
            self._transport.close()

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the answer being prepared."""
        if not self._handling and not self._queue:
            self._close(linger=False)

    def abort(self) -> asyncio.Task[None] | None:
        """The grace period is over: cancel the handler, if any, and drop the connection."""
        task = self._runner if self._handling else None
        if task is not None:
            task.cancel()
        self._transport.abort()
        return task

    def check_timeouts(self, now: float) -> None:
        if self._closed:
            return
        if self._lingering:
            if now > self._linger_until:
                self._transport.abort()
        elif not self._handling and now - self._last_active > self._edge.idle_timeout_s:
            if self._transport.get_write_buffer_size():
                self._transport.abort()  # it does not read its answers; close() would wait forever
            else:
                self._close(linger=False)


def _target(raw: bytes) -> str:
    """The request-target as path[?query]; an absolute-form target (`http://host/path`, sent
    to proxies) is cut down to its path and query."""
    target = raw.decode("latin-1")
    if target.startswith("/"):
        return target
    try:
        url = httptools.parse_url(raw)
    except httptools.HttpParserInvalidURLError:
        return target
    path = (url.path or b"/").decode("latin-1")
    return f"{path}?{url.query.decode('latin-1')}" if url.query else path
