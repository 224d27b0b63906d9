"""The Lambda Runtime API (2018-06-01), served to one sandbox on the sockets its backend made.

    GET  /2018-06-01/runtime/invocation/next            long poll: the next event
    POST /2018-06-01/runtime/invocation/{id}/response   202: the function's result
    POST /2018-06-01/runtime/invocation/{id}/error      202: the function's error
    POST /2018-06-01/runtime/init/error                 202: init failed (the runtime then exits)
    GET  /2018-06-01/runtime/firebox/specialize         Firebox only, stem cells only (404 for
                                                        every other sandbox): a long poll that
                                                        answers, once, the function's environment

Byte-compatible with AWS: the `Lambda-Runtime-*` headers on `/next`, `{"status":"OK"}` on 202,
`{"errorMessage","errorType"}` on 4xx, 413 for a response over the 6 MB limit. Any runtime that
speaks this (our bootstraps, AWS's `awslambdaric`, a shell script with curl) works unmodified.

A `RuntimeChannel` is the sandbox's side of the conversation: `deliver()` hands an invocation to
the runtime's pending (or next) `/next`, and the invocation's `outcome` future resolves when the
runtime posts its response or error. The HTTP side is a small asyncio Protocol on httptools, no
framework: this hop is on every invocation.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import httptools

MAX_RESPONSE_BYTES = 6 * 1024 * 1024
# Paths as the request carries them (bytes: no decoding on the usual path; a path is decoded
# as latin-1, byte for character, where it is needed as text).
_PREFIX = b"/2018-06-01/runtime"
_INVOCATION_PATH = re.compile(re.escape(_PREFIX) + rb"/invocation/([^/]+)/(response|error)")
_NEXT_PATH = _PREFIX + b"/invocation/next"
_SPECIALIZE_PATH = _PREFIX + b"/firebox/specialize"
_INIT_ERROR_PATH = _PREFIX + b"/init/error"


@dataclass
class Invocation:
    request_id: str
    payload: bytes
    deadline_ms: int
    invoked_function_arn: str
    trace_id: str
    client_context: str | None = None  # JSON text
    cognito_identity: str | None = None  # JSON text
    outcome: asyncio.Future[RuntimeOutcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class RuntimeOutcome(NamedTuple):
    """What the runtime said about one invocation. (A NamedTuple, immutable, made per
    invocation: about 3,000 instructions fewer than a frozen dataclass.)"""

    payload: bytes
    error_type: str | None = None  # set when the runtime posted /error (or the response was too big)


# Made with every field given, on the paths taken by every invocation: a NamedTuple's own
# constructor is a Python function around this call (about 1,800 instructions more).
new_outcome = tuple.__new__


class RuntimeChannel:
    """One sandbox's Runtime API state: init progress, the event handed out, pending outcomes.

    `stem=True` (a stem cell, `runtimes/python/stem.py`): the channel also serves the private
    `/firebox/specialize` long poll, ONCE; `stem_waiting` resolves when the stem asks (it has
    then loaded the runtime), and `specialize(body)` answers it with the function's environment.
    """

    def __init__(self, *, stem: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()  # first /next = init done
        self.init_error: asyncio.Future[RuntimeOutcome] = loop.create_future()
        self.stem_waiting: asyncio.Future[None] | None = loop.create_future() if stem else None
        self._specialization: asyncio.Future[bytes] | None = loop.create_future() if stem else None
        self._specialize_asked = False
        self._events: deque[Invocation] = deque()  # delivered, not asked for yet
        self._askers: deque[Callable[[Invocation], bool]] = deque()  # parked `/next` polls
        self._in_flight: dict[str, Invocation] = {}

    def deliver(self, invocation: Invocation) -> None:
        """Hand the event to the runtime's parked `/next` (answered here and now, no task in
        between: this is on every invocation), or keep it for its next one."""
        self._in_flight[invocation.request_id] = invocation
        while self._askers:
            if self._askers.popleft()(invocation):
                return
        self._events.append(invocation)

    def forget(self, request_id: str) -> None:
        self._in_flight.pop(request_id, None)

    def ask_next(self, answer: Callable[[Invocation], bool]) -> Invocation | None:
        """A `/next` poll: the event waiting for it, or None, and then `answer(event)` is called
        when one is delivered (it returns False when its connection is gone: the event then goes
        to the next poll). The first poll says that init is over."""
        if not self.ready.done():
            self.ready.set_result(None)
        if self._events:
            return self._events.popleft()
        self._askers.append(answer)
        return None

    def withdraw(self, answer: Callable[[Invocation], bool]) -> None:
        """A parked poll's connection closed: it takes no event."""
        try:
            self._askers.remove(answer)
        except ValueError:
            pass

    def complete(self, request_id: str, outcome: RuntimeOutcome) -> bool:
        invocation = self._in_flight.pop(request_id, None)
        if invocation is None or invocation.outcome.done():
            return False
        invocation.outcome.set_result(outcome)
        return True

    def specialize(self, body: bytes) -> None:
        """Answer the stem cell's pending (or next) specialize poll with `body`."""
        if self._specialization is None or self._specialization.done():
            raise RuntimeError("this sandbox is not an unspecialised stem cell")
        self._specialization.set_result(body)

    def ask_specialization(self) -> asyncio.Future[bytes] | None:
        """A specialize poll: the future of its body; None (404) unless this is a stem cell's
        first ask."""
        if self._specialization is None or self._specialize_asked:
            return None
        self._specialize_asked = True
        assert self.stem_waiting is not None
        if not self.stem_waiting.done():
            self.stem_waiting.set_result(None)
        return self._specialization

    def fail_init(self, outcome: RuntimeOutcome) -> None:
        if not self.init_error.done():
            self.init_error.set_result(outcome)


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 413: "Request Entity Too Large",
              500: "Internal Server Error"}.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_ACCEPTED = _response(202, b'{"status":"OK"}')


def _error(status: int, error_type: str, message: str) -> bytes:
    return _response(status, json.dumps({"errorMessage": message, "errorType": error_type}).encode())


# A request parsed, not answered yet: (method, url, error type, body, too large). A plain tuple:
# two of them per invocation.
_Request = tuple[bytes, bytes, "str | None", bytes, bool]

_ERROR_TYPE_HEADER = b"lambda-runtime-function-error-type"  # the only request header read
_ERROR_TYPE_HEADER_LENGTH = len(_ERROR_TYPE_HEADER)


class RuntimeApiProtocol(asyncio.Protocol):
    """One connection from the runtime. Requests on a connection are answered in order.

    No task per connection or request: a request is answered as soon as what it asks for is
    there, from `data_received` (a POST, a `/next` whose event waits) or from the channel's
    `deliver` (a parked `/next`). The runtime pipelines `POST .../response` and the next `GET
    /next`; the POST's 202 is then held and goes out with that `/next`'s event, in one write: the
    runtime has no use for it before, and so it wakes once per invocation instead of twice.
    Only answers to POSTs are held, never an event, so a runtime that pipelines anything behind
    a `/next` still gets its event at once."""

    def __init__(self, channel: RuntimeChannel) -> None:
        self._channel = channel
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        # The request being parsed; set back for the next one when it is complete (so no
        # on_message_begin callback: after a parse error the connection closes).
        self._url = b""
        self._error_type: str | None = None  # the Lambda-Runtime-Function-Error-Type header
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._parsed: deque[_Request] = deque()  # complete, not taken up yet
        self._parked = False  # the request being answered waits (a long poll)
        self._held: list[bytes] = []  # answers that go out with the next write

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._reply(_error(400, "InvalidRequest", "Malformed HTTP request"))
            self._close()
            return
        self._take_up()  # after the whole chunk: a request pipelined behind a POST is seen

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._parsed.clear()
        self._held.clear()
        self._channel.withdraw(self._event_delivered)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # The length first: no lowered copy of the other headers (about 250 instructions each).
        if len(name) == _ERROR_TYPE_HEADER_LENGTH and name.lower() == _ERROR_TYPE_HEADER:
            self._error_type = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_RESPONSE_BYTES:
            self._too_large = True
            self._body.clear()
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body
        self._parsed.append((self._parser.get_method(), self._url, self._error_type,
                             b"".join(body) if body else b"", self._too_large))
        self._url = b""
        self._error_type = None
        if body:
            body.clear()
        self._size = 0
        self._too_large = False

    # -- answering, in order -------------------------------------------------------------------

    def _take_up(self) -> None:
        """Answer the parsed requests in order, until one has to wait."""
        while self._parsed and not self._parked and self._transport is not None:
            request = self._parsed.popleft()
            method, path = request[0], request[1]
            # find, not `b"?" in path`: bytes' `in` first tries its argument as an int, and
            # raising and clearing that TypeError costs about 1,800 instructions.
            if (query := path.find(b"?")) >= 0:
                path = path[:query]
            if method == b"GET" and path == _NEXT_PATH:
                event = self._channel.ask_next(self._event_delivered)
                if event is None:
                    self._parked = True
                else:
                    self._reply(self._next_response(event))
            elif method == b"GET" and path == _SPECIALIZE_PATH and (
                    body := self._channel.ask_specialization()) is not None:
                if body.done():
                    self._reply(_response(200, body.result()))
                else:
                    self._parked = True
                    body.add_done_callback(self._specialized)
            elif self._parsed:  # a request is pipelined behind this one: see the class doc
                self._held.append(self._post(request, path))
            else:
                self._reply(self._post(request, path))

    def _event_delivered(self, invocation: Invocation) -> bool:
        """The channel's call for a parked `/next`: False when this connection is gone."""
        if self._transport is None or self._transport.is_closing():
            return False
        self._parked = False
        self._reply(self._next_response(invocation))
        if self._parsed:
            self._take_up()
        return True

    def _specialized(self, body: asyncio.Future[bytes]) -> None:
        if self._transport is None or body.cancelled():
            return
        self._parked = False
        self._reply(_response(200, body.result()))
        self._take_up()

    def _reply(self, answer: bytes) -> None:
        """Write `answer`, after the answers held for it (see the class doc)."""
        if self._held:
            self._held.append(answer)
            answer = b"".join(self._held)
            self._held.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer)

    def _post(self, request: _Request, path: bytes) -> bytes:
        """The answer to anything but a long poll (the POSTs, and 404s)."""
        method, _, error_type, body, too_large = request
        if method == b"POST" and path == _INIT_ERROR_PATH:
            self._channel.fail_init(RuntimeOutcome(body, error_type or "Runtime.Unknown"))
            return _ACCEPTED
        found = _INVOCATION_PATH.fullmatch(path)
        if method == b"POST" and found:
            request_id = found[1].decode("latin-1")
            if too_large:
                outcome = RuntimeOutcome(
                    json.dumps({
                        # AWS's wording, odd number included.
                        "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes).",
                        "errorType": "Function.ResponseSizeTooLarge",
                    }).encode(),
                    "Function.ResponseSizeTooLarge",
                )
                self._channel.complete(request_id, outcome)
                return _error(413, "RequestEntityTooLarge",
                              f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).")
            if found[2] == b"response":
                outcome = new_outcome(RuntimeOutcome, (body, None))
            else:
                outcome = RuntimeOutcome(body, error_type or "Unhandled")
            if not self._channel.complete(request_id, outcome):
                return _error(400, "InvalidRequestID", "Invalid request ID")
            return _ACCEPTED
        return _error(404, "InvalidRequest",
                      f"No Runtime API route for {method.decode()} {path.decode('latin-1')}")

    def _next_response(self, invocation: Invocation) -> bytes:
        """The event, as `_response(200, payload, headers)` would write it, formatted in one
        go: no dict of headers, list of lines and join (on every invocation: about 12,000
        fewer instructions)."""
        payload = invocation.payload
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                f"Lambda-Runtime-Aws-Request-Id: {invocation.request_id}\r\n"
                f"Lambda-Runtime-Deadline-Ms: {invocation.deadline_ms}\r\n"
                f"Lambda-Runtime-Invoked-Function-Arn: {invocation.invoked_function_arn}\r\n"
                f"Lambda-Runtime-Trace-Id: {invocation.trace_id}\r\n")
        if invocation.client_context is not None:
            head += f"Lambda-Runtime-Client-Context: {invocation.client_context}\r\n"
        if invocation.cognito_identity is not None:
            head += f"Lambda-Runtime-Cognito-Identity: {invocation.cognito_identity}\r\n"
        return (head + "\r\n").encode("latin-1") + payload

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class RuntimeApiServer:
    """One sandbox's Runtime API being served: on its listener, and on the connection the
    backend gave the runtime, if any. `close()` stops both (connections accepted on the
    listener end when the sandbox's processes do, as before)."""

    def __init__(self, server: asyncio.AbstractServer, connection: asyncio.BaseTransport | None) -> None:
        self._server = server
        self._connection = connection

    def close(self) -> None:
        self._server.close()
        if self._connection is not None:
            self._connection.close()


async def serve(channel: RuntimeChannel, listener: socket.socket,
                connection: socket.socket | None = None) -> RuntimeApiServer:
    """Serve the Runtime API for one sandbox on its (already listening) socket and, when the
    backend made one (`SandboxProcess.runtime_api_connection`), on the connected socket whose
    other end the runtime already holds."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RuntimeApiProtocol(channel), sock=listener)
    transport = None
    if connection is not None:
        try:
            # A duplicate for the transport, which closes it (uvloop: by its number, whenever
            # its close completes); the backend's cleanup closes the original, so neither can
            # close a number that was reused meanwhile.
            transport, _ = await loop.connect_accepted_socket(lambda: RuntimeApiProtocol(channel),
                                                              sock=connection.dup())
        except BaseException:
            server.close()
            raise
    return RuntimeApiServer(server, transport)
