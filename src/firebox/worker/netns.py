"""A private network namespace per sandbox, with the Runtime API socket listening inside it.

How (all of it without `ip` or any other subprocess):

1. `create_private_loopback()` starts a short-lived thread (default) or forks a short-lived
   child (`method="fork"`). It calls `unshare(CLONE_NEWNET)` (through ctypes: Python 3.11 has no
   `os.unshare`), which moves that thread (or child) alone into a fresh namespace whose only
   interface is `lo`, down.
2. It brings `lo` up with the `SIOCGIFFLAGS` / `SIOCSIFFLAGS` ioctls on a datagram socket,
   creates a TCP socket, binds it to 127.0.0.1:<port> (9001 by default, the port Lambda itself
   uses), listens, and opens its own `ns/net`.
3. The thread hands both fds over in memory and ends; the forked child sends them over a
   socketpair (`SCM_RIGHTS`), then `_exit(0)`. Either way nothing else ever runs in the new
   namespace on the platform's side.
4. The platform keeps both: a socket stays in the namespace it was created in whoever holds it, so
   the platform accepts, in its own namespace, connections made inside the private one. The
   namespace fd is what the sandbox's launcher `setns()`es into before `exec` (see
   `enter_netns`), so inside the sandbox 127.0.0.1:9001 is the platform and nothing else of the
   host (the platform's HTTP port, other loopback services, the outside network) exists.

The namespace lives as long as something references it: the netns fd, the listening socket, or a
process inside. The kernel tears it down asynchronously once the last reference is gone.

Requirements: CAP_SYS_ADMIN (root) for `unshare(CLONE_NEWNET)` in the initial user namespace and
for `setns`. Without it, `create_private_loopback` raises `NetnsUnavailable`.

Why a thread by default: measured on the 2-core test VM, the thread variant costs ~1.1 ms (of
which `unshare` ~0.65 ms), the fork variant ~4.5 ms (forking a Python process is slow there), and
a thread carries no fork-in-a-threaded-process hazards. With `method="fork"`, the child runs only
code already imported here, a handful of system calls, and `os._exit`.

For the event loop: `LoopbackMaker`
-----------------------------------
A backend makes one namespace per sandbox start, from async code. `LoopbackMaker` keeps ONE
long-lived thread for that, instead of a new thread per namespace reached through the default
executor (`asyncio.to_thread(create_private_loopback)`: two thread hand-offs, a thread start and
a join per namespace). Its thread, per request: `unshare(CLONE_NEWNET)`, the set-up of step 2,
then `setns()` back into the namespace it started in (its fd opened once, by the thread itself),
and the result goes to the waiting coroutine through `call_soon_threadsafe`. The rule that keeps
it as safe as a short-lived thread: the thread runs nothing but this, and after an `unshare` it
either gets back into its original namespace or ends at once (the next request starts a new
thread). Measured on the 2-core VM: 0.92-0.99 ms of process CPU per namespace, against
1.21-1.46 ms through `to_thread`. A result whose waiter was cancelled meanwhile is closed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import fcntl
import os
import queue
import signal
import socket
import struct
import threading
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: a 16-byte name and a 24-byte union, of which `short flags`

RUNTIME_API_HOST = "127.0.0.1"
RUNTIME_API_PORT = 9001
_BACKLOG = 64
_CHILD_DEADLINE_S = 10.0


class NetnsUnavailable(OSError):
    """This host (or this process's privileges) cannot make a private network namespace."""


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")


def enter_netns(netns_fd: int) -> None:
    """`setns(netns_fd, CLONE_NEWNET)` for the calling thread. Safe in a `preexec_fn`."""
    if _libc.setns(netns_fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(net): {os.strerror(err)}")


@dataclass
class PrivateLoopback:
    """A network namespace with `lo` up and a TCP socket listening inside it.

    `listener` is non-blocking and close-on-exec; `netns_fd` is close-on-exec too (the launcher
    uses it in `preexec_fn`, before exec). `address` is what a process inside the namespace
    connects to ("127.0.0.1:9001")."""

    netns_fd: int
    listener: socket.socket
    address: str
    _closed_ns: bool = field(default=False, repr=False)

    def close_netns_fd(self) -> None:
        """Drop the namespace fd (the sandbox and the listener keep the namespace alive)."""
        if not self._closed_ns:
            self._closed_ns = True
            os.close(self.netns_fd)

    def close(self) -> None:
        self.close_netns_fd()
        self.listener.close()


def _bring_lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack(_IFREQ, b"lo", 0)
        name, flags = struct.unpack(_IFREQ, fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))
        if not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP))


def _setup(host: str, port: int, ns_path: str) -> tuple[socket.socket, int]:
    """In a thread or process that has just unshared its network namespace."""
    _bring_lo_up()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(_BACKLOG)
        return listener, os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        listener.close()
        raise


def _create_in_thread(host: str, port: int) -> PrivateLoopback:
    outcome: list[object] = []

    def body() -> None:
        try:
            unshare(CLONE_NEWNET)  # this thread only; it ends right after
        except OSError as exc:
            outcome.append(NetnsUnavailable(exc.errno, f"cannot create a private network namespace: {exc}"))
            return
        try:
            outcome.append(_setup(host, port, "/proc/thread-self/ns/net"))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=body, name="firebox-netns", daemon=True)
    thread.start()
    thread.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    listener, netns_fd = result  # type: ignore[misc]
    listener.setblocking(False)
    return PrivateLoopback(netns_fd=netns_fd, listener=listener, address=f"{host}:{port}")


def _child(channel: socket.socket, host: str, port: int) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        unshare(CLONE_NEWNET)
        listener, netns_fd = _setup(host, port, "/proc/self/ns/net")
        socket.send_fds(channel, [b"ok"], [listener.fileno(), netns_fd])
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then _exit
        try:
            number = exc.errno if isinstance(exc, OSError) and exc.errno else 0
            channel.sendall(f"E{number}:{exc}".encode()[:900])
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def create_private_loopback(port: int = RUNTIME_API_PORT, host: str = RUNTIME_API_HOST, *,
                            method: str = "thread") -> PrivateLoopback:
    """A fresh network namespace with `lo` up and a listener on host:port inside it. Blocking
    (about 1 ms with "thread", 4-5 ms with "fork" on the 2-core test VM): from async code, run
    it on a worker thread.

    `method="thread"` (default): a new, short-lived thread calls `unshare(CLONE_NEWNET)`, which
    moves only that thread; it makes the socket, opens `/proc/thread-self/ns/net`, and exits, so
    no thread that runs anything else ever lives in the new namespace (never do this on a pooled
    executor thread). `method="fork"`: the same in a forked child that passes the fds back over
    SCM_RIGHTS (the original design; slower because this VM forks a Python process slowly)."""
    if method == "thread":
        return _create_in_thread(host, port)
    if method != "fork":
        raise ValueError(f"unknown method {method!r}")
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent_end:
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                parent_end.close()
                _child(child_end, host, port)
        finally:
            child_end.close()
        parent_end.settimeout(_CHILD_DEADLINE_S)
        try:
            message, fds, _flags, _addr = socket.recv_fds(parent_end, 1024, 2, socket.MSG_CMSG_CLOEXEC)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            raise
        finally:
            os.waitpid(pid, 0)  # the child exits right after sending (or was just killed)
    if message != b"ok" or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        text = message.decode(errors="replace")
        number, _, detail = text[1:].partition(":") if text.startswith("E") else ("0", "", text)
        err = int(number) if number.isdigit() else 0
        if err in (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EINVAL):
            raise NetnsUnavailable(err, f"cannot create a private network namespace: {detail}")
        raise OSError(err or errno.EIO, f"private network namespace setup failed: {detail or 'no answer'}")
    listener = socket.socket(fileno=fds[0])
    listener.setblocking(False)
    return PrivateLoopback(netns_fd=fds[1], listener=listener, address=f"{host}:{port}")


# A request to the maker's thread: where to hand the loopback over.
_Request = tuple[asyncio.AbstractEventLoop, "asyncio.Future[PrivateLoopback]"]


class LoopbackMaker:
    """Private loopbacks for async code, made one after another by one long-lived thread (see
    "For the event loop" in the module docstring). `create` from the event loop (a thread of the
    host's namespace: the maker's thread starts from there); `close` when done (idle, the
    thread only waits on its queue)."""

    def __init__(self, port: int = RUNTIME_API_PORT, host: str = RUNTIME_API_HOST) -> None:
        self._port = port
        self._host = host
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Held while starting or forgetting the thread and while queueing, so that a request
        # is never queued behind a thread that has just given up (see `_abandon`).
        self._lock = threading.Lock()
        self.made = 0  # namespaces made (statistics, tests)
        self.threads_started = 0

    async def create(self) -> PrivateLoopback:
        """A fresh namespace with `lo` up and the listener inside; NetnsUnavailable or OSError
        as `create_private_loopback`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PrivateLoopback] = loop.create_future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="firebox-netns", daemon=True)
                self._thread.start()
                self.threads_started += 1
            self._requests.put((loop, future))
        return await future

    def close(self) -> None:
        """Stop the thread once the requests already queued are served."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._requests.put(None)
        if thread is not None:
            thread.join()

    def _serve(self) -> None:
        """The thread: serves requests until `close`, or until it could not get back into its
        own namespace (then it ends at once)."""
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._abandon(exc)
            return
        try:
            while (request := self._requests.get()) is not None:
                outcome, back_home = self._make_one(home)
                if not back_home:  # forgotten before its caller hears back: no request waits on it
                    self._abandon(OSError(errno.EIO, "the network namespace thread could not return to its namespace"))
                _hand_over(*request, outcome)
                if not back_home:
                    return
        finally:
            os.close(home)

    def _make_one(self, home: int) -> tuple[PrivateLoopback | BaseException, bool]:
        """(the loopback or the error, whether this thread is back in its own namespace)."""
        try:
            unshare(CLONE_NEWNET)
        except OSError as exc:
            return NetnsUnavailable(exc.errno, f"cannot create a private network namespace: {exc}"), True
        outcome: PrivateLoopback | BaseException
        try:
            listener, netns_fd = _setup(self._host, self._port, "/proc/thread-self/ns/net")
            listener.setblocking(False)
            outcome = PrivateLoopback(netns_fd=netns_fd, listener=listener, address=f"{self._host}:{self._port}")
            self.made += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome = exc
        try:
            enter_netns(home)
        except BaseException:  # noqa: BLE001 - this thread must never serve again
            return outcome, False
        return outcome, True

    def _abandon(self, error: OSError) -> None:
        """This thread ends without serving the queue (it may be stuck in a sandbox's
        namespace: it must not make another one, nor start its successor, which would inherit
        that namespace). What is queued fails with `error`; the next `create` starts a new
        thread from the event loop."""
        with self._lock:
            if self._thread is threading.current_thread():
                self._thread = None
            while True:
                try:
                    request = self._requests.get_nowait()
                except queue.Empty:
                    return
                if request is not None:
                    _hand_over(*request, error)


def _hand_over(loop: asyncio.AbstractEventLoop, future: asyncio.Future[PrivateLoopback],
               outcome: PrivateLoopback | BaseException) -> None:
    """From the maker's thread: resolve `future` on its loop; a loopback nobody takes any more
    (the waiter was cancelled, the loop is closed) is closed."""

    def resolve() -> None:
        if future.done():
            if isinstance(outcome, PrivateLoopback):
                outcome.close()
        elif isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    try:
        loop.call_soon_threadsafe(resolve)
    except RuntimeError:  # the loop is closed
        if isinstance(outcome, PrivateLoopback):
            outcome.close()
