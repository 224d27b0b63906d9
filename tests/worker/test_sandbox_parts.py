"""The sandbox layer's parts on their own: the spec's validation, the seccomp program, the
private network namespace, the cgroup driver, the uid pool, exit-status decoding."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest
from sandbox_helpers import make_spec

import firebox.worker.cgroups as cgroups_module
from firebox.errors import ServiceError
from firebox.worker import netns, seccomp
from firebox.worker.backends._common import UidPool, decode_status
from firebox.worker.cgroups import CgroupDriver, CgroupsUnavailable
from firebox.worker.sandbox_api import SandboxBackend

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_spec_is_validated_and_frozen(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    with pytest.raises(AttributeError):
        spec.memory_mb = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.environment["X"] = "y"  # type: ignore[index]
    assert spec.memory_bytes == 256 * 1024 * 1024
    bad = [
        dict(sandbox_id="XYZ"),
        dict(command=("python3", "x.py")),
        dict(command=()),
        dict(environment={"AWS_LAMBDA_RUNTIME_API": "1.2.3.4:1"}),
        dict(environment={"BAD=NAME": "x"}),
        dict(environment={"A": "nul\0"}),
        dict(memory_mb=0),
        dict(runtime_dir=Path("relative")),
        dict(extra_ro_binds=((Path("/x"), "/var/task"),)),
        dict(extra_ro_binds=((Path("/x"), "relative"),)),
    ]
    for override in bad:
        with pytest.raises(ValueError):
            make_spec(tmp_path, **override)


def test_seccomp_program_is_compiled_once_and_served_per_sandbox() -> None:
    program = seccomp.compiled_filter()
    assert program and len(program) % 8 == 0  # struct sock_filter is 8 bytes
    assert seccomp.compiled_filter() is program
    fd = seccomp.filter_fd()
    try:
        assert os.read(fd, len(program) + 1) == program
    finally:
        os.close(fd)
    assert "mount" in seccomp.DENIED and "personality" not in seccomp.DENIED


@root_only
@pytest.mark.parametrize("method", ["thread", "fork"])
def test_private_loopback_lives_in_its_own_namespace(method: str) -> None:
    net = netns.create_private_loopback(method=method)
    try:
        assert net.address == "127.0.0.1:9001"
        assert net.listener.getblocking() is False
        assert os.readlink(f"/proc/self/fd/{net.netns_fd}") != os.readlink("/proc/self/ns/net")
        # A thread that joins the namespace reaches the listener there; the namespace has lo up.
        seen: list[object] = []

        def inside() -> None:
            try:
                netns.enter_netns(net.netns_fd)
                with socket.create_connection(("127.0.0.1", 9001), timeout=5) as conn:
                    conn.sendall(b"hi")
                seen.append(socket.if_nameindex())
            except BaseException as exc:  # noqa: BLE001
                seen.append(exc)

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join()
        assert seen == [[(1, "lo")]], seen
        net.listener.setblocking(True)
        conn, _ = net.listener.accept()
        assert conn.recv(2) == b"hi"
        conn.close()
    finally:
        net.close()
    net.close_netns_fd()  # idempotent


def _thread_netns(native_id: int) -> str:
    return os.readlink(f"/proc/self/task/{native_id}/ns/net")


@root_only
def test_loopback_maker_serves_from_one_thread_that_stays_home() -> None:
    maker = netns.LoopbackMaker()
    host = os.readlink("/proc/self/ns/net")

    async def make_some() -> list[netns.PrivateLoopback]:
        return list(await asyncio.gather(*(maker.create() for _ in range(5))))

    nets = asyncio.run(make_some())
    try:
        namespaces = {os.readlink(f"/proc/self/fd/{net.netns_fd}") for net in nets}
        assert len(namespaces) == 5 and host not in namespaces
        assert all(net.listener.getblocking() is False and net.address == "127.0.0.1:9001" for net in nets)
        assert maker.threads_started == 1 and maker.made == 5
        thread = maker._thread
        assert thread is not None and thread.native_id is not None
        assert _thread_netns(thread.native_id) == host  # back home between requests
    finally:
        for net in nets:
            net.close()
        maker.close()
    assert not thread.is_alive()


@root_only
def test_loopback_maker_closes_what_a_cancelled_caller_no_longer_takes() -> None:
    maker = netns.LoopbackMaker()
    closed: list[netns.PrivateLoopback] = []
    real_close = netns.PrivateLoopback.close

    async def cancel_one() -> None:
        task = asyncio.ensure_future(maker.create())
        await asyncio.sleep(0)  # queued
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (await maker.create()).close()  # served after the cancelled one: its hand-over has run

    try:
        netns.PrivateLoopback.close = lambda self: (closed.append(self), real_close(self))[1]  # type: ignore[method-assign]
        asyncio.run(cancel_one())
    finally:
        netns.PrivateLoopback.close = real_close  # type: ignore[method-assign]
        maker.close()
    assert len(closed) == 2 and maker.made == 2


@root_only
def test_loopback_maker_thread_that_cannot_return_home_serves_no_more(monkeypatch: pytest.MonkeyPatch) -> None:
    maker = netns.LoopbackMaker()
    host = os.readlink("/proc/self/ns/net")

    def stuck(fd: int) -> None:
        raise OSError(1, "setns refused (test)")

    async def run() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(netns, "enter_netns", stuck)
            first = await maker.create()  # made, then its thread could not go back: it ends
            first.close()
        thread = maker._thread
        assert thread is None  # forgotten: the next request starts a new one, from here
        second = await maker.create()
        second.close()
        assert maker.threads_started == 2
        current = maker._thread
        assert current is not None and current.native_id is not None
        assert _thread_netns(current.native_id) == host

    try:
        asyncio.run(run())
    finally:
        maker.close()


@root_only
def test_cgroup_driver_limits_and_removal(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        driver = CgroupDriver.detect()
    except CgroupsUnavailable as exc:
        pytest.skip(f"no writable cgroups here: {exc}")
    try:
        group = driver.create("0" * 32, memory_bytes=64 * 1024 * 1024, max_pids=7)
        memory = group.dirs[0]
        if driver.version == 1:
            assert int((memory / "memory.limit_in_bytes").read_text()) == 64 * 1024 * 1024
        else:
            assert int((memory / "memory.max").read_text()) == 64 * 1024 * 1024
        if "pids" in driver.controllers:
            assert (group.dirs[-1] / "pids.max").read_text().strip() == "7"
        if driver.version == 1:
            # Written once on the instance group; each new group starts with its parent's.
            assert driver.v1_swappiness_inherited
            assert (memory / "memory.swappiness").read_text().strip() == "0"
            if driver.v1_memsw:
                assert int((memory / "memory.memsw.limit_in_bytes").read_text()) == 64 * 1024 * 1024
        assert group.oom_kills() == 0 and group.pids() == set()
        limit_file = memory / ("memory.limit_in_bytes" if driver.version == 1 else "memory.max")
        written: list[Path] = []
        real_write = cgroups_module._write
        monkeypatch.setattr(cgroups_module, "_write", lambda path, text: (written.append(path), real_write(path, text))[1])
        group.set_memory_limit(64 * 1024 * 1024)  # the limit it has (a stem cell's): nothing written
        assert written == []
        group.set_memory_limit(96 * 1024 * 1024)
        assert limit_file in written and int(limit_file.read_text().split()[0]) == 96 * 1024 * 1024
        assert asyncio.run(group.remove())
        assert not any(d.exists() for d in group.dirs)
        assert group.memory_peak() is None
    finally:
        driver.close()
    assert not any(d.exists() for d in driver.instance_dirs)


def test_uid_pool_skips_known_ids_and_reuses_late() -> None:
    import pwd

    known = pwd.getpwall()[0].pw_uid  # root's, on any host
    assert UidPool(range(known, known + 1)).size == 0
    assert UidPool(range(os.getuid(), os.getuid() + 1)).size == 0
    pool = UidPool(range(64990, 64993))
    first = pool.allocate()
    pool.release(first)
    second = pool.allocate()
    assert second != first  # FIFO: a released uid goes to the back
    pool.release(second)
    pool.release(second)  # idempotent
    assert pool.in_use == 0
    with pytest.raises(ServiceError, match="no free sandbox uid"):
        UidPool(range(known, known + 1)).allocate()


def test_exit_status_decoding() -> None:
    assert decode_status(0, bwrap=True) == 0
    assert decode_status(1, bwrap=True) == 1
    assert decode_status(137, bwrap=True) == -9
    assert decode_status(128, bwrap=True) == 128
    assert decode_status(-9, bwrap=False) == -9


def test_backends_satisfy_the_protocol() -> None:
    from firebox.worker.backends import IsolatedBackend, ProcessBackend

    for cls in (IsolatedBackend, ProcessBackend):
        for name in ("spawn", "statistics", "close"):
            assert callable(getattr(cls, name))
        assert isinstance(cls.name, str) and isinstance(cls.isolated, bool)
    assert SandboxBackend is not None


def test_cgroup_v2_files_are_read_and_written(tmp_path) -> None:
    """The v2 driver's file handling, on a plain directory shaped like a cgroup v2 group (this
    machine's cgroup2 mount has no memory controller to run a real sandbox under)."""
    from firebox.worker.cgroups import _V2Sandbox

    (tmp_path / "memory.peak").write_text("12345\n")
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    group = _V2Sandbox(tmp_path)
    assert group.memory_peak() == 12345
    group.set_memory_limit(128 * 1024 * 1024)
    assert (tmp_path / "memory.max").read_text() == str(128 * 1024 * 1024)
    assert group.oom_kills() == 2


@pytest.mark.parametrize("version", [1, 2])
def test_take_memory_peak_reads_then_resets(tmp_path, version: int) -> None:
    """`take_memory_peak()` (after every invocation) is `memory_peak()` then `reset_memory_peak()`,
    in one call: same value for what the kernel writes (a number and a newline), None when the
    file is unreadable or the group removed, and the reset written either way."""
    from firebox.worker.cgroups import _V1Sandbox, _V2Sandbox

    name, reset = ("memory.max_usage_in_bytes", b"0") if version == 1 else ("memory.peak", b"reset\n")
    peak_file = tmp_path / name
    for text in ["12345\n", "0\n", "9223372036854771712\n", "", "\n", "max\n"]:
        peak_file.write_text(text)
        group = _V1Sandbox(tmp_path, None) if version == 1 else _V2Sandbox(tmp_path)
        expected = group.memory_peak()
        assert group.take_memory_peak() == expected, text
        assert peak_file.read_bytes() == reset + text.encode()[len(reset):], text
        peak_file.write_text(text)
        group.reset_memory_peak()
        written_by_reset = peak_file.read_bytes()
        peak_file.write_text(text)
        group.take_memory_peak()
        assert peak_file.read_bytes() == written_by_reset
        group.removed = True
        assert group.take_memory_peak() is None and group.memory_peak() is None
        group._close_files()
