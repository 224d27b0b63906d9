"""Firebox's Python runtime: the process that serves one Lambda sandbox's invocations.

Run as a script, `python3 -u -S -B /var/runtime/python/bootstrap.py`, or loaded as a module and
its `main()` called (what `firebox.runtimes.api.bootstrap_command` does, to use cached bytecode),
with the Lambda variables set (see `firebox.runtimes.api` for the contract). Standard library
only, one file, Python 3.8+: nothing of the platform is installed where this runs. It behaves as
AWS's `awslambdaric`:

    init:  sys.path = [task root, /opt/python/lib/pythonX.Y/site-packages, /opt/python, ...stdlib,
           $FIREBOX_RUNTIME_LIBS]; root logger handler installed; the handler's module imported
           ONCE (an error is posted to /runtime/init/error and the process exits 1)
    loop:  GET /next -> handler(event, context) -> POST /response (JSON) or /error, with the
           GET /next for the following event pipelined behind it in the same write

Why this module is one file of about 1,030 lines (over the house's 600): it runs inside the
sandbox, where nothing of the platform is installed, and it is loaded by path (so that its
bytecode can be precompiled, and a stem cell can load it before it knows its function);
splitting it would mean shipping and importing sibling modules from /var/runtime on every cold
start (each import is a path search and a file read inside the sandbox), for no gain in what
the function sees. Its sections (errors, logging, the Runtime API client,
marshalling, the context object, init and the loop, with `TraceIdVariable` at its head) are
marked with `# ---` rules below.

The Runtime API client is a minimal HTTP/1.1 client on one keep-alive socket rather than
`http.client`, whose import (email parser, ssl) would double this runtime's own start-up cost
(AWS's client also avoids importing it on the hot path).
"""

import os
import sys

# Python put this script's folder first on sys.path (or, started through `-c`, '' for the
# current directory): a function's module must never resolve to anything there.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and (sys.path[0] == "" or os.path.abspath(sys.path[0]) == _HERE):
    del sys.path[0]

import _imp  # noqa: E402
import importlib  # noqa: E402  (after the sys.path fix on purpose)
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import marshal  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

API_VERSION = "2018-06-01"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
ERROR_LOG_LINE_TERMINATE = "\r"
ERROR_LOG_IDENT = "\u00a0"  # AWS indents traceback lines in error records with NO-BREAK SPACE
USER_AGENT = "firebox-python/%d.%d.%d" % sys.version_info[:3]

# (socket, reader) of a Runtime API connection to use before connecting to AWS_LAMBDA_RUNTIME_API:
# the one a stem cell (stem.py) was specialised on, or the socket a zygote's child was started
# with (zygote.py).
ADOPTED_CONNECTION = None

_request_id = None  # the invocation in progress, for log records
_tenant_id = None


# --- errors --------------------------------------------------------------------------------


class FaultException(Exception):
    """A runtime-detected fault with a Lambda error type (`Runtime.*`)."""

    MARSHAL_ERROR = "Runtime.MarshalError"
    UNMARSHAL_ERROR = "Runtime.UnmarshalError"
    USER_CODE_SYNTAX_ERROR = "Runtime.UserCodeSyntaxError"
    HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"
    IMPORT_MODULE_ERROR = "Runtime.ImportModuleError"
    BUILT_IN_MODULE_CONFLICT = "Runtime.BuiltInModuleConflict"
    MALFORMED_HANDLER_NAME = "Runtime.MalformedHandlerName"
    LAMBDA_CONTEXT_UNMARSHAL_ERROR = "Runtime.LambdaContextUnmarshalError"

    def __init__(self, exception_type, msg, trace=None):
        super().__init__(msg)
        self.exception_type = exception_type
        self.msg = msg
        self.trace = trace


class RuntimeAPIGone(Exception):
    """The Runtime API cannot be reached or answered nonsense: the platform went away.

    `report`: say why on stderr before exiting (a misconfiguration); a vanished API is quiet."""

    def __init__(self, msg, report=False):
        super().__init__(msg)
        self.report = report


def make_error(error_message, error_type, stack_trace, invoke_id=None):
    return {
        "errorMessage": error_message if error_message else "",
        "errorType": error_type if error_type else "",
        "requestId": invoke_id if invoke_id is not None else "",
        "stackTrace": stack_trace if stack_trace else [],
    }


def _user_frames(tb):
    """The traceback's frames from the first one that is not this bootstrap's (as AWS does)."""
    frames = [(f.filename, f.lineno, f.name, f.line) for f in traceback.extract_tb(tb)]
    for i, frame in enumerate(frames):
        if "/bootstrap.py" not in frame[0]:
            return frames[i:]
    return frames


def build_fault_result(exc_info, invoke_id=None):
    etype, value, tb = exc_info
    return make_error(str(value), etype.__name__, traceback.format_list(_user_frames(tb)), invoke_id)


# --- logging ---------------------------------------------------------------------------------


def _one_record(text):
    """A log record as one output line: inner newlines become `\\r`, one `\\n` ends it."""
    if text.endswith("\n"):
        text = text[:-1]
    return text.replace("\n", ERROR_LOG_LINE_TERMINATE) + "\n"


def _json_dumps(obj, **kwargs):
    return json.dumps(obj, ensure_ascii=False, **kwargs)


def log_error(error_result):
    """Write an error report as ONE record on stdout, like AWS's runtime."""
    if _LOG_FORMAT_JSON:
        record = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "level": "ERROR"}
        record.update(error_result)
        _write_stdout(_json_dumps(record, default=str) + "\n")
        return
    description = "[ERROR]"
    if error_result.get("errorType"):
        description += " " + error_result["errorType"]
    if error_result.get("errorMessage"):
        if error_result.get("errorType"):
            description += ":"
        description += " " + error_result["errorMessage"]
    lines = [description]
    stack_trace = error_result.get("stackTrace")
    if stack_trace is not None:
        lines.append("Traceback (most recent call last):")
        for element in stack_trace:
            if element == "":
                lines.append("")
                continue
            for line in element.splitlines():
                stripped = line.lstrip(" ")
                lines.append(ERROR_LOG_IDENT * (len(line) - len(stripped)) + stripped)
    _write_stdout(_one_record("\n".join(lines)))


def _write_stdout(text):
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # nobody is reading the log: never let that fail an invocation


class LambdaLoggerFilter(logging.Filter):
    def filter(self, record):
        record.aws_request_id = _request_id or ""
        record.tenant_id = _tenant_id
        return True


class LambdaLoggerHandler(logging.Handler):
    """The root logger's handler: every record is one line on stdout (`sys.stdout` at emit time)."""

    def emit(self, record):
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        _write_stdout(_one_record(text))


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__(
            "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n",
            "%Y-%m-%dT%H:%M:%S",
        )


_RESERVED_FIELDS = frozenset(
    (
        "name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module",
        "exc_info", "exc_text", "stack_info", "lineno", "funcName", "created", "msecs",
        "relativeCreated", "thread", "threadName", "processName", "process", "taskName",
        "aws_request_id", "tenant_id", "_frame_type", "message", "asctime",
    )
)


class JsonFormatter(logging.Formatter):
    """AWS's JSON log records: timestamp, level, message, logger, requestId (+ error fields)."""

    def formatTime(self, record, datefmt=None):
        seconds = int(record.created)
        millis = int((record.created - seconds) * 1000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % millis

    def format(self, record):
        level = min(50, max(0, record.levelno)) // 10 * 10
        exc_info = record.exc_info
        result = {
            "timestamp": self.formatTime(record),
            "level": logging.getLevelName(level),
            "message": record.getMessage(),
            "logger": record.name,
            "stackTrace": traceback.format_tb(exc_info[2]) if exc_info else None,
            "errorType": exc_info[0].__name__ if exc_info else None,
            "errorMessage": str(exc_info[1]) if exc_info else None,
            "requestId": getattr(record, "aws_request_id", None),
            "location": "%s:%s:%s" % (record.pathname, record.funcName, record.lineno) if exc_info else None,
        }
        if getattr(record, "tenant_id", None) is not None:
            result["tenantId"] = record.tenant_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED_FIELDS and key not in result:
                result[key] = value
        return _json_dumps({k: v for k, v in result.items() if v is not None}, default=str) + "\n"


def setup_logging():
    """The root logger's handler, as AWS's runtime sets it up (returned)."""
    logging.Formatter.converter = time.gmtime  # as AWS's runtime does: every formatter says UTC
    logger = logging.getLogger()
    handler = LambdaLoggerHandler()
    handler.setFormatter(JsonFormatter() if _LOG_FORMAT_JSON else TextFormatter())
    handler.addFilter(LambdaLoggerFilter())
    # AWS_LAMBDA_LOG_LEVEL is set by the platform when an application log level is configured
    # (always with JSON); unset, the root logger keeps Python's default, WARNING, as on AWS.
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL")
    level = {None: "", "TRACE": "DEBUG"}.get(level, level).upper()
    if level in logging._nameToLevel:  # noqa: SLF001  (what AWS's runtime checks)
        logger.setLevel(level)
    logger.addHandler(handler)
    return handler


_LOG_FORMAT_JSON = (os.environ.get("AWS_LAMBDA_LOG_FORMAT") or "").upper() == "JSON"


# --- the Runtime API client ----------------------------------------------------------------

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_UNRESERVED = re.compile("[A-Za-z0-9._~-]*")  # ASCII only; `re` is loaded already (json uses it)


def _parse_headers(block):
    """{lower-cased name: value} of a header block, names and values without surrounding blanks;
    a line without a colon is no header, and skipped. Plain string methods: a regex doing the
    same (lazy groups, one pass over the block) took 26 microseconds for an event's headers,
    this loop 4, and two blocks are read per invocation."""
    headers = {}
    for line in block.decode("latin-1").split("\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip(" \t").lower()] = value.strip(" \t\r")
    return headers


def _quote(text):
    """The request id as a path segment. A UUID needs no escaping: returned as it is, without
    the byte-by-byte walk (on every invocation, a tenth of the runtime's own Python)."""
    if _UNRESERVED.fullmatch(text):
        return text
    return "".join(chr(b) if b in _SAFE else "%%%02X" % b for b in text.encode("utf-8"))


class RuntimeClient:
    """HTTP/1.1 to the Runtime API on one keep-alive connection (no timeout: /next long-polls)."""

    def __init__(self, address):
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise RuntimeAPIGone("AWS_LAMBDA_RUNTIME_API must be host:port, not %r" % address, report=True)
        self._address = (host.strip("[]") or "127.0.0.1", int(port))
        self._host = address
        self._prefix = "/%s/runtime" % API_VERSION
        self._sock = None
        self._reader = None
        self._ask_next = self._encode("GET", "/invocation/next")  # the same bytes every time

    def close(self):
        if self._sock is not None:
            try:
                self._reader.close()
                self._sock.close()
            except OSError:
                pass
        self._sock = self._reader = None

    def _connect(self):
        host, port = self._address
        try:  # an ASCII host as bytes: getaddrinfo then skips importing the idna codec
            host = host.encode("ascii")
        except UnicodeEncodeError:
            pass
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._reader = sock, sock.makefile("rb")

    def _encode(self, method, path, body=None, headers=None):
        head = ["%s %s%s HTTP/1.1" % (method, self._prefix, path), "Host: " + self._host, "User-Agent: " + USER_AGENT]
        if body is not None:
            head.append("Content-Length: %d" % len(body))
        for name, value in (headers or {}).items():
            head.append("%s: %s" % (name, value))
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + (body or b"")

    def request(self, method, path, body=None, headers=None, then_next=False):
        """(status, lower-cased headers, body). Raises RuntimeAPIGone when the API is gone.

        `then_next`: send `GET /invocation/next` right behind this request, in the same write
        (HTTP/1.1 pipelining; the Runtime API answers in order), and return ((status, headers,
        body) of this request, (headers, body) of the next event). One wake-up of each side
        fewer per invocation than posting, waiting for the 202, then asking."""
        data = self._encode(method, path, body, headers)
        if then_next:
            data += self._ask_next
        for attempt in (1, 2):
            reused = self._sock is not None
            try:
                if not reused:
                    self._connect()
                self._sock.sendall(data)
                status_line = self._reader.readline(65537)
                if not status_line:
                    raise ConnectionResetError("connection closed before a response")
            except OSError as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # a kept-alive connection the server had closed: one fresh try
                raise RuntimeAPIGone(str(exc)) from None
            try:
                answer = self._read_response(status_line)
            except (OSError, ValueError) as exc:
                self.close()
                raise RuntimeAPIGone(str(exc)) from None
            if not then_next:
                return answer
            if self._sock is None:  # the API closed the connection after this answer
                return answer, self.next_invocation()
            return answer, self._next_answer(self.request_pending_next())
        raise RuntimeAPIGone("unreachable")

    def request_pending_next(self):
        """The answer to a `GET /next` already sent (pipelined). If the API closed the
        connection without answering it (allowed after any answer), it is asked again on a
        fresh one: an unanswered `/next` took no event."""
        try:
            status_line = self._reader.readline(65537)
        except OSError:
            status_line = b""
        if not status_line:
            self.close()
            return self.request("GET", "/invocation/next")
        try:
            return self._read_response(status_line)
        except (OSError, ValueError) as exc:
            self.close()
            raise RuntimeAPIGone(str(exc)) from None

    def _read_response(self, status_line):
        while True:
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ValueError("bad status line %r" % status_line[:100])
            status = int(parts[1])
            headers = _parse_headers(self._header_block())
            if 100 <= status < 200:  # an interim response: the real one follows
                status_line = self._reader.readline(65537)
                continue
            break
        keep_alive = parts[0] != b"HTTP/1.0" and "close" not in headers.get("connection", "").lower()
        if status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(self._reader.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self._reader.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self._read_exactly(size))
                self._reader.readline(65537)
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = self._read_exactly(int(headers["content-length"]))
        else:
            body, keep_alive = self._reader.read(), False
        if not keep_alive:
            self.close()
        return status, headers, body

    def _header_block(self):
        """The header lines after a status line, without the blank line that ends them. When the
        reader holds the whole block already (the usual case: a response comes in one segment),
        it is taken in one read; otherwise line by line."""
        reader = self._reader
        held = reader.peek(1)  # what the reader holds; it reads the socket only when empty
        if held.startswith(b"\r\n"):
            reader.read(2)
            return b""
        end = held.find(b"\r\n\r\n")
        if end >= 0 and held.find(b"\n\n", 0, end) < 0:  # (bare newlines end a block earlier)
            return reader.read(end + 4)[: end + 2]
        lines = []
        while True:
            line = reader.readline(65537)
            if not line:
                raise ConnectionResetError("connection closed in the headers")
            if line in (b"\r\n", b"\n"):
                return b"".join(lines)
            lines.append(line)

    def _read_exactly(self, size):
        data = self._reader.read(size)
        if len(data) != size:
            raise ConnectionResetError("connection closed in the body")
        return data

    def next_invocation(self):
        return self._next_answer(self.request("GET", "/invocation/next"))

    @staticmethod
    def _next_answer(answer):
        status, headers, body = answer
        if status != 200:
            detail = body[:200].decode("utf-8", "replace")
            raise RuntimeAPIGone("GET /next answered %d: %s" % (status, detail), report=True)
        return headers, body

    def post_invocation_result(self, invoke_id, body, content_type="application/json"):
        """Post the result and ask for the next event at once; returns that event."""
        return self.request("POST", "/invocation/%s/response" % _quote(invoke_id), body,
                            {"Content-Type": content_type}, then_next=True)[1]

    def post_invocation_error(self, invoke_id, error_result):
        """Post the error and ask for the next event at once; returns that event."""
        headers = {"Content-Type": "application/json", ERROR_TYPE_HEADER: "Unhandled"}
        return self.request("POST", "/invocation/%s/error" % _quote(invoke_id), _encode_json(error_result), headers,
                            then_next=True)[1]

    def post_init_error(self, error_result):
        headers = {"Content-Type": "application/json", ERROR_TYPE_HEADER: error_result["errorType"] or "Unhandled"}
        self.request("POST", "/init/error", _encode_json(error_result), headers)


# --- (un)marshalling -------------------------------------------------------------------------


def _json_default(obj):
    # AWS's encoder writes decimal.Decimal as its exact digits; the standard library can only
    # write it as a float (DynamoDB numbers are the usual case).
    if type(obj).__name__ == "Decimal" and type(obj).__module__ in ("decimal", "_decimal", "_pydecimal"):
        if obj.is_finite() and obj.as_tuple().exponent >= 0:
            return int(obj)
        return float(obj)
    raise TypeError("Object of type %s is not JSON serializable" % type(obj).__name__)


# What json.dumps(obj, ensure_ascii=False, default=_json_default) builds on every call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, default=_json_default)


def _encode_json(obj):
    text = _JSON_ENCODER.encode(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: escape them rather than fail
        return json.dumps(obj, default=_json_default).encode("ascii")


def unmarshal_request(body, content_type):
    if content_type and "json" not in content_type.lower():
        return body  # AWS hands a non-JSON payload over as bytes
    try:
        if body[:1] and 0 < body[0] < 0x80 and (len(body) < 2 or body[1]):
            # UTF-8 for sure (no BOM, no UTF-16/32 NUL): what json.loads(bytes) would decode,
            # without its encoding detection.
            return json.loads(body.decode("utf-8", "surrogatepass"))
        return json.loads(body)
    except Exception as exc:
        raise FaultException(FaultException.UNMARSHAL_ERROR, "Unable to unmarshal input: %s" % exc)


def marshal_response(response):
    if isinstance(response, bytes):
        return response, "application/unknown"
    try:
        return _encode_json(response), "application/json"
    except Exception as exc:
        raise FaultException(FaultException.MARSHAL_ERROR, "Unable to marshal response: %s" % exc)


# --- the context object ---------------------------------------------------------------------


class LambdaContext:
    """`context`: the same attributes and methods as AWS's `awslambdaric.lambda_context`."""

    def __init__(self, invoke_id, client_context, cognito_identity, epoch_deadline_time_in_ms,
                 invoked_function_arn=None, tenant_id=None):
        self.aws_request_id = invoke_id
        # Read on every invocation, as AWS's runtime does: a function that changes them sees it.
        (self.log_group_name, self.log_stream_name, self.function_name, self.memory_limit_in_mb,
         self.function_version) = _from_environ(_CONTEXT_VARIABLES)
        self.invoked_function_arn = invoked_function_arn
        self.tenant_id = tenant_id
        self.client_context = _make_obj(ClientContext, client_context)
        if self.client_context is not None:
            self.client_context.client = _make_obj(Client, self.client_context.client)
        # Always an object, like AWS's: its fields are None without a Cognito identity.
        self.identity = CognitoIdentity()
        self.identity.cognito_identity_id = self.identity.cognito_identity_pool_id = None
        if cognito_identity is not None:
            self.identity.cognito_identity_id = cognito_identity.get("cognitoIdentityId")
            self.identity.cognito_identity_pool_id = cognito_identity.get("cognitoIdentityPoolId")
        self._epoch_deadline_time_in_ms = epoch_deadline_time_in_ms

    def get_remaining_time_in_millis(self):
        delta_ms = self._epoch_deadline_time_in_ms - int(time.time() * 1000)
        return delta_ms if delta_ms > 0 else 0

    def log(self, msg):
        _write_stdout(str(msg))

    def __repr__(self):
        return (
            "%s([aws_request_id=%s,log_group_name=%s,log_stream_name=%s,function_name=%s,"
            "memory_limit_in_mb=%s,function_version=%s,invoked_function_arn=%s,client_context=%s,"
            "identity=%s,tenant_id=%s])"
            % (
                self.__class__.__name__, self.aws_request_id, self.log_group_name, self.log_stream_name,
                self.function_name, self.memory_limit_in_mb, self.function_version,
                self.invoked_function_arn, self.client_context, self.identity, self.tenant_id,
            )
        )


class CognitoIdentity:
    __slots__ = ["cognito_identity_id", "cognito_identity_pool_id"]

    def __repr__(self):
        return "%s([cognito_identity_id=%s,cognito_identity_pool_id=%s])" % (
            self.__class__.__name__, self.cognito_identity_id, self.cognito_identity_pool_id)


class Client:
    __slots__ = ["installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name"]

    def __repr__(self):
        return "%s([installation_id=%s,app_title=%s,app_version_name=%s,app_version_code=%s,app_package_name=%s])" % (
            self.__class__.__name__, self.installation_id, self.app_title, self.app_version_name,
            self.app_version_code, self.app_package_name)


class ClientContext:
    __slots__ = ["custom", "env", "client"]

    def __repr__(self):
        return "%s([custom=%s,env=%s,client=%s])" % (self.__class__.__name__, self.custom, self.env, self.client)


_CONTEXT_VARIABLES = tuple(os.fsencode(name) for name in (
    "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION"))
_FS_ENCODING = sys.getfilesystemencoding()


def _from_environ(names):
    """os.environ.get of each name (bytes), read from os.environ's own bytes-to-bytes store when
    it is the interpreter's: a dict lookup and a decode instead of four Python calls each."""
    data = getattr(os.environ, "_data", None)
    if type(data) is not dict:
        return [os.environ.get(os.fsdecode(name)) for name in names]
    return [None if value is None else value.decode(_FS_ENCODING, "surrogateescape") for value in map(data.get, names)]


def _make_obj(cls, values):
    if values is None:
        return None
    obj = cls()
    for field in cls.__slots__:
        setattr(obj, field, values.get(field) if isinstance(values, dict) else None)
    return obj


def _parse_json_header(value, name):
    if not value:
        return None
    try:
        return json.loads(value)
    except Exception as exc:
        raise FaultException(FaultException.LAMBDA_CONTEXT_UNMARSHAL_ERROR, "Unable to parse %s JSON: %s" % (name, exc))


# --- init and the loop ---------------------------------------------------------------------


class TraceIdVariable:
    """`_X_AMZN_TRACE_ID`, set for each invocation as AWS's runtime sets it (in `os.environ`, and
    in the process's C environment, which children and C code read), without glibc's setenv.

    Why: `os.environ[name] = value` calls setenv(3), and glibc's setenv keeps a copy of every
    distinct value it was ever given, for good (pointers it handed out must stay valid). A trace
    ID is new for every invocation, so a warm sandbox grew by some 140 bytes per invocation (28 MB
    over 200,000) until its memory limit killed it. putenv(3) keeps the string it is given
    instead of copying it: the variable lives in one buffer of ours, rewritten in place (a bigger
    one, kept, when a value does not fit), and `os.environ`'s own mapping is updated beside it,
    so both views agree. Without ctypes it falls back to `os.environ`, leak included."""

    NAME = "_X_AMZN_TRACE_ID"
    _KEY = NAME.encode("ascii")
    _ENTRY_PREFIX = _KEY + b"="

    def __init__(self):
        self._buffers = []  # (buffer, a view of its bytes) of every buffer handed to putenv: kept alive
        self._putenv = None
        self._last = self  # the value last set, as os.environ's mapping holds it (none yet)
        try:
            import ctypes  # (preloaded by zygotes and stem cells: not on the invocation path)

            self._putenv = ctypes.CDLL(None).putenv  # (no argtypes: a char array goes as its address)
        except (ImportError, OSError, AttributeError):
            return
        self._new_buffer = ctypes.create_string_buffer

    def set(self, value):
        data = getattr(os.environ, "_data", None)  # os._Environ's own store (a function may replace os.environ)
        if type(data) is not dict or self._putenv is None:
            os.environ[self.NAME] = value
            return
        encoded = value.encode(_FS_ENCODING, "surrogateescape")  # (what os.environ would store)
        if b"\0" in encoded:
            raise ValueError("embedded null byte")
        buffers, start = self._buffers, len(self._ENTRY_PREFIX)
        end = start + len(encoded)
        if not buffers or len(buffers[-1][1]) <= end:  # (room for the terminating NUL)
            buffer = self._new_buffer(self._ENTRY_PREFIX, max(256, 2 * end))
            buffers.append((buffer, memoryview(buffer).cast("B")))
            self._last = self
        # In place, where the environment points once putenv has run. (A forked sandbox copies
        # the pages of every object its first invocation touches: few here, on purpose.)
        buffer, view = buffers[-1]
        view[start:end] = encoded
        view[end] = 0
        if data.get(self._KEY) is not self._last:  # a new buffer, or the function set or unset it itself
            self._putenv(buffer)
        data[self._KEY] = self._last = encoded


TRACE_ID_VARIABLE = TraceIdVariable()


def setup_path(task_root):
    """sys.path as on AWS: the function's code, then its layers, then the standard library."""
    version = "python%d.%d" % sys.version_info[:2]
    front = [task_root, "/opt/python/lib/%s/site-packages" % version, "/opt/python"]
    sys.path[:] = front + [p for p in sys.path if p not in front]
    for extra in (os.environ.get("FIREBOX_RUNTIME_LIBS") or "").split(":"):
        if extra and extra not in sys.path:
            sys.path.append(extra)


WRITABLE_FOLDERS = ("/tmp", "/dev/shm")  # new and empty in each sandbox

# Set by `plan_changed_listings` in a zygote: (task root, size of sys.path_importer_cache then,
# the finders of the folders that change).
_LISTINGS_PLAN = None


def forget_changed_listings(task_root):
    """importlib.invalidate_caches(), for the folders whose contents a sandbox can have changed
    since this interpreter imported from them: the task root (empty in a zygote or an
    unspecialised stem cell, then the function's code), /tmp and /dev/shm (new in each
    sandbox). The path finders of every other folder, on the sandbox's read-only root (the
    standard library, the platform's libraries), keep their listings, which are still right:
    a function's first import of a standard module that no one imported yet does not list
    the standard library again, and far fewer of the zygote's objects (pages) are written.
    As invalidate_caches does, missing folders (None) and relative paths are forgotten and
    namespace packages recompute their portions.

    A zygote's children skip the walk over the cache (`plan_changed_listings`) while it holds
    what it held at the fork."""
    plan = _LISTINGS_PLAN
    if plan is not None and plan[0] == task_root and plan[1] == len(sys.path_importer_cache):
        finders = plan[2]
    else:
        changed = _changed_folders(task_root)
        finders = []
        for path, finder in list(sys.path_importer_cache.items()):
            if finder is None or not os.path.isabs(path):
                del sys.path_importer_cache[path]
            elif _within(path, changed):
                finders.append(finder)
    for finder in finders:
        invalidate = getattr(finder, "invalidate_caches", None)
        if invalidate is not None:
            invalidate()
    namespace_path = getattr(importlib._bootstrap_external, "_NamespacePath", None)
    if namespace_path is not None and hasattr(namespace_path, "_epoch"):
        namespace_path._epoch += 1


def _changed_folders(task_root):
    return tuple(root.rstrip("/") or "/" for root in (task_root, *WRITABLE_FOLDERS))


def _within(path, folders):
    return any(path == folder or path.startswith(folder + "/") for folder in folders)


def plan_changed_listings(task_root):
    """For a zygote, once it will import nothing more before it forks: forget the changed
    listings here (which drops the missing folders and relative paths from the cache), then
    note the finders that every child will have to forget again, so that a child's
    `forget_changed_listings` calls just those instead of walking the whole cache: walking it
    touches every finder and path, each of which copies a page the child shares with the
    zygote (measured per sandbox, checkpoints in a copy of the zygote under
    bench/sandboxes.py: 30-32 -> 10-11 page faults, 0.14-0.19 -> 0.06-0.07 ms of CPU).
    A child whose cache changed size since (an import that met a new folder) walks it as
    before; one whose cache changed without changing size (an entry replaced by another) would
    keep a stale listing, and nothing in the runtime does that before the handler is
    imported."""
    global _LISTINGS_PLAN
    _LISTINGS_PLAN = None
    forget_changed_listings(task_root)
    changed = _changed_folders(task_root)
    finders = tuple(finder for path, finder in sys.path_importer_cache.items() if _within(path, changed))
    _LISTINGS_PLAN = (task_root, len(sys.path_importer_cache), finders)


def setup_builtins():
    """`exit` / `quit` / `help`, which `site` adds and `-S` leaves out."""
    if "site" in sys.modules and not sys.flags.no_site:
        return
    import builtins

    if not hasattr(builtins, "exit"):
        try:
            import _sitebuiltins

            builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
            builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
            builtins.help = _sitebuiltins._Helper()
        except (ImportError, AttributeError):
            pass


def setup_stdio():
    """Every write reaches the pipe at once (`-u` does it; this covers a start without `-u`)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            if not sys.flags.unbuffered:
                stream.reconfigure(line_buffering=True)
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def import_handler_module(name):
    """importlib.import_module(name), without the walk through the import system's finders when
    its answer is plain: `name` is a top-level module, not imported yet, not frozen, with only
    the standard finders on sys.meta_path, and the first sys.path entry (the task root) holds
    `name.py` and nothing else that could be `name` (a package or namespace folder, an
    extension module). That file is then loaded as the path finder would load it: the spec is
    built the way FileFinder builds it (`spec_from_file_location` with a SourceFileLoader) and
    `_bootstrap._load` does what an import does with it (module lock, sys.modules, clean-up
    on failure). Measured: a hello module in 124 instead of 190 us, warm; more in a cold start.
    When its bytecode is ready (the platform compiles every package), `_load_bytecode` loads
    it.
    """
    from importlib import _bootstrap, _bootstrap_external

    root = sys.path[0] if sys.path else ""
    load = getattr(_bootstrap, "_load", None)
    if (load is None or not root or "." in name or name in sys.modules
            or any(finder not in _STANDARD_FINDERS for finder in sys.meta_path)
            or (name in _FROZEN if _FROZEN is not None else _bootstrap.FrozenImporter.find_spec(name) is not None)):
        return importlib.import_module(name)
    try:
        entries = set(os.listdir(root))
    except OSError:
        return importlib.import_module(name)
    if name + ".py" not in entries or name in entries or any(
            name + suffix in entries for suffix in _bootstrap_external.EXTENSION_SUFFIXES):
        return importlib.import_module(name)
    path = os.path.join(root, name + ".py")
    if "__pycache__" in entries:
        module = _load_bytecode(name, path, _bootstrap, _bootstrap_external)
        if module is not None:
            return module
    loader = _bootstrap_external.SourceFileLoader(name, path)
    return load(_bootstrap_external.spec_from_file_location(name, path, loader=loader))


def _load_bytecode(name, path, _bootstrap, _bootstrap_external):
    """The module of `path` (`name.py` in the task root) from the bytecode next to it, as
    SourceFileLoader would load it (its get_code, then `_bootstrap._load`), when that bytecode
    is where and what it checks first: `__pycache__/name.<cache tag>.pyc`, this interpreter's
    magic number, timestamp-based, for the source's mtime and size. Anything else (no such
    file, a hash-based or stale one, an optimisation level, a pycache prefix, a module called
    `__init__`, which would be a package) is None, and the caller imports it the usual way.
    Why: each function of the import machinery that runs in a sandbox forked from a zygote
    writes to the pages of its code (reference counts), and each such page is copied. Measured
    per sandbox under bench/sandboxes.py, with checkpoints in a copy of the zygote: from the
    spec to the module's execution, 0.45 -> 0.33 ms of CPU and 53 -> 42 page faults; the
    sandboxes' whole CPU, 3.94 -> 3.83 ms (medians of 4 alternated runs)."""
    if (_PYC_SUFFIX is None or sys.flags.optimize or sys.pycache_prefix is not None or name == "__init__"
            or not os.path.isabs(path) or not hasattr(_bootstrap, "_ModuleLockManager")):
        return None
    cached = "%s/__pycache__/%s%s" % (path.rpartition("/")[0], name, _PYC_SUFFIX)
    try:
        source = os.stat(path)
        with io.FileIO(cached) as handle:
            data = handle.readall()
    except OSError:
        return None
    if (len(data) < 16 or data[:4] != _bootstrap_external.MAGIC_NUMBER or data[4:8] != b"\0\0\0\0"
            or int.from_bytes(data[8:12], "little") != int(source.st_mtime) & 0xFFFFFFFF
            or int.from_bytes(data[12:16], "little") != source.st_size & 0xFFFFFFFF):
        return None
    code = marshal.loads(memoryview(data)[16:])
    if not isinstance(code, type(_load_bytecode.__code__)):
        return None
    _imp._fix_co_filename(code, path)
    spec = _bootstrap.ModuleSpec(name, _bootstrap_external.SourceFileLoader(name, path), origin=path)
    spec._set_fileattr = True  # has_location, as spec_from_file_location sets it
    spec.cached = cached
    with _bootstrap._ModuleLockManager(name):  # _load, then _load_unlocked, with this code
        module = _bootstrap.module_from_spec(spec)
        spec._initializing = True
        try:
            sys.modules[name] = module
            try:
                exec(code, module.__dict__)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            module = sys.modules.pop(name)  # the module may have put something else there
            sys.modules[name] = module
        finally:
            spec._initializing = False
    return module


_STANDARD_FINDERS = tuple(
    finder for finder in sys.meta_path
    if getattr(finder, "__module__", "") in ("_frozen_importlib", "_frozen_importlib_external"))
# What FrozenImporter finds, asked once (its find_spec is Python code on every call).
_FROZEN = frozenset(_imp._frozen_module_names()) if hasattr(_imp, "_frozen_module_names") else None
# The bytecode file's suffix, as cache_from_source makes it with no optimisation level.
_PYC_SUFFIX = "." + sys.implementation.cache_tag + ".pyc" if sys.implementation.cache_tag else None


def get_handler(handler):
    try:
        modname, fname = handler.rsplit(".", 1)
    except ValueError as exc:
        raise FaultException(FaultException.MALFORMED_HANDLER_NAME, "Bad handler '%s': %s" % (handler, exc))
    try:
        if modname.split(".")[0] in sys.builtin_module_names:
            raise FaultException(
                FaultException.BUILT_IN_MODULE_CONFLICT, "Cannot use built-in module %s as a handler module" % modname
            )
        module = import_handler_module(modname.replace("/", "."))
    except ImportError as exc:
        raise FaultException(FaultException.IMPORT_MODULE_ERROR, "Unable to import module '%s': %s" % (modname, exc))
    except SyntaxError as exc:
        trace = ['  File "%s" Line %s\n    %s' % (exc.filename, exc.lineno, exc.text)]
        raise FaultException(
            FaultException.USER_CODE_SYNTAX_ERROR, "Syntax error in module '%s': %s" % (modname, exc), trace
        )
    try:
        return getattr(module, fname)
    except AttributeError:
        raise FaultException(
            FaultException.HANDLER_NOT_FOUND, "Handler '%s' missing on module '%s'" % (fname, modname)
        ) from None


def handle_event_request(client, request_handler, headers, body):
    global _request_id, _tenant_id
    invoke_id = headers.get("lambda-runtime-aws-request-id", "")
    _request_id = invoke_id
    _tenant_id = headers.get("lambda-runtime-aws-tenant-id") or None
    trace_id = headers.get("lambda-runtime-trace-id")
    if trace_id:
        TRACE_ID_VARIABLE.set(trace_id)
    else:
        os.environ.pop(TRACE_ID_VARIABLE.NAME, None)
    error_result = None
    try:
        try:
            deadline_ms = int(headers.get("lambda-runtime-deadline-ms") or 0)
        except ValueError:
            deadline_ms = 0
        context = LambdaContext(
            invoke_id,
            _parse_json_header(headers.get("lambda-runtime-client-context"), "Client Context"),
            _parse_json_header(headers.get("lambda-runtime-cognito-identity"), "Cognito Identity"),
            deadline_ms,
            headers.get("lambda-runtime-invoked-function-arn"),
            _tenant_id,
        )
        event = unmarshal_request(body, headers.get("content-type"))
        response = request_handler(event, context)
        result, content_type = marshal_response(response)
    except FaultException as exc:
        error_result = make_error(exc.msg, exc.exception_type, exc.trace, invoke_id)
    except Exception:
        error_result = build_fault_result(sys.exc_info(), invoke_id)
    if error_result is not None:
        log_error(error_result)
        return client.post_invocation_error(invoke_id, error_result)
    return client.post_invocation_result(invoke_id, result, content_type)


def _placement():
    """What init's process set-up reads: the task root and the platform's libraries."""
    return os.environ.get("LAMBDA_TASK_ROOT") or "/var/task", os.environ.get("FIREBOX_RUNTIME_LIBS")


def _logging_choice():
    """What the logging set-up reads: JSON or text, and the level variable."""
    return (os.environ.get("AWS_LAMBDA_LOG_FORMAT") or "").upper() == "JSON", os.environ.get("AWS_LAMBDA_LOG_LEVEL")


def _set_up_process(task_root):
    setup_stdio()
    setup_builtins()
    setup_path(task_root)
    try:
        os.chdir(task_root)
    except OSError:
        pass


# Set by `prepare_init`: (placement, logging choice, sys.path and root level before, handler).
_PREPARED = None


def _prepare(prepared):
    """Make init's function-independent set-up match the environment: all of it when
    `prepared` is None, else only the parts whose variables changed since `prepared` (what
    this returned then). Returns the new state."""
    global _LOG_FORMAT_JSON
    placement, choice = _placement(), _logging_choice()
    _LOG_FORMAT_JSON = choice[0]
    if prepared is None:
        path, level, handler = list(sys.path), logging.getLogger().level, None
    else:
        path, level, handler = prepared[2:]
    if prepared is None or prepared[0] != placement:
        sys.path[:] = path
        _set_up_process(placement[0])
    if prepared is None or prepared[1] != choice:
        root = logging.getLogger()
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        handler = setup_logging()
    return placement, choice, path, level, handler


def prepare_init():
    """Init's steps that need nothing of the function: stdio, builtins, sys.path, the working
    directory and logging, done ahead with the environment at hand: by a Python zygote
    (zygote.py) before it forks anything, and by a stem cell (stem.py) while it waits for a
    function. Run again, or by `main()`, it redoes only the steps whose variables have changed
    since (the log format or level, in practice), so a cold start no longer pays for the rest
    (measured, two servers alternated, 60 cold starts each way twice: Init Duration p50
    1.88 -> 1.71 and 1.91 -> 1.79 ms), nor does every forked sandbox copy what they write."""
    global _PREPARED
    _PREPARED = _prepare(_PREPARED)


def main():
    global _PREPARED
    # Read again here (`_prepare`): a stem cell (stem.py) loads this module before it has the
    # function's environment.
    prepared, _PREPARED = _PREPARED, None
    _prepare(prepared)
    try:
        client = RuntimeClient(os.environ.get("AWS_LAMBDA_RUNTIME_API", ""))
        if ADOPTED_CONNECTION is not None:
            client._sock, client._reader = ADOPTED_CONNECTION
        try:
            request_handler = get_handler(os.environ.get("_HANDLER", ""))
        except FaultException as exc:
            error_result = make_error(exc.msg, exc.exception_type, exc.trace)
        except Exception:
            error_result = build_fault_result(sys.exc_info())
        else:
            error_result = None
        if error_result is not None:
            log_error(error_result)
            client.post_init_error(error_result)
            return 1
        headers, body = client.next_invocation()
        while True:  # each result is posted together with the ask for the next event
            headers, body = handle_event_request(client, request_handler, headers, body)
    except RuntimeAPIGone as exc:
        if exc.report:
            sys.stderr.write("firebox runtime: %s\n" % exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
