"""The seccomp program itself, syscall number by syscall number: a small classic-BPF interpreter
here runs the compiled program (as the kernel would, on a `struct seccomp_data`) for every
number, so a change in how the program is built (a binary tree of the numbers, today) cannot
let a denied call through or deny an allowed one unnoticed. Then the kernel loads it, in a
forked child."""

from __future__ import annotations

import ctypes
import errno
import os
import struct

import pytest

from firebox.worker import seccomp

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
EPERM = seccomp.scmp_act_errno(errno.EPERM)
ENOSYS = seccomp.scmp_act_errno(errno.ENOSYS)

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="the numbers and arch are x86_64's")


def run_program(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64, args: tuple[int, ...] = (0,) * 6) -> int:
    """The action the program returns for one syscall (struct seccomp_data: nr, arch,
    instruction pointer, six arguments). Only the instructions libseccomp emits for a filter
    like ours are known; any other fails the test rather than being guessed at."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    instructions = list(struct.iter_unpack("<HBBI", program))
    accumulator, pc = 0, 0
    while True:
        code, jump_true, jump_false, k = instructions[pc]
        pc += 1
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            accumulator = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:  # BPF_ALU | BPF_AND | BPF_K
            accumulator &= k
        elif code == 0x15:  # BPF_JMP | BPF_JEQ | BPF_K
            pc += jump_true if accumulator == k else jump_false
        elif code == 0x25:  # BPF_JMP | BPF_JGT | BPF_K
            pc += jump_true if accumulator > k else jump_false
        elif code == 0x35:  # BPF_JMP | BPF_JGE | BPF_K
            pc += jump_true if accumulator >= k else jump_false
        elif code == 0x45:  # BPF_JMP | BPF_JSET | BPF_K
            pc += jump_true if accumulator & k else jump_false
        elif code == 0x05:  # BPF_JMP | BPF_JA
            pc += k
        elif code == 0x06:  # BPF_RET | BPF_K
            return k
        else:
            raise AssertionError(f"instruction {code:#x} at {pc - 1} is not emulated here")


def number(name: str) -> int:
    return seccomp._load().seccomp_syscall_resolve_name(name.encode())


@pytest.mark.parametrize("deny_new_userns", [False, True])
def test_every_syscall_number_gets_the_policy_action(deny_new_userns: bool) -> None:
    program = seccomp.compile_filter(deny_new_userns=deny_new_userns)
    denied = {number(name) for name in seccomp.DENIED} - {-1}
    assert len(denied) > 40 and number("mount") in denied
    clone, clone3 = number("clone"), number("clone3")
    for nr in range(0, 1024):
        action = run_program(program, nr)
        if deny_new_userns and nr == clone3:
            assert action == ENOSYS, nr
        elif nr in denied:
            assert action == EPERM, nr
        else:
            assert action == SECCOMP_RET_ALLOW, nr
    # clone: refused with a new user namespace in its flags (when asked), whatever else is there
    with_new_userns = run_program(program, clone, args=(seccomp.CLONE_NEWUSER | 0x11, 0, 0, 0, 0, 0))
    assert with_new_userns == (EPERM if deny_new_userns else SECCOMP_RET_ALLOW)
    assert run_program(program, clone, args=(0x11, 0, 0, 0, 0, 0)) == SECCOMP_RET_ALLOW
    # another ABI: not allowed (the bad-architecture action ends the process)
    for nr, arch in ((number("getpid"), AUDIT_ARCH_I386), (X32_SYSCALL_BIT | number("getpid"), AUDIT_ARCH_X86_64)):
        assert run_program(program, nr, arch=arch) & SECCOMP_RET_ACTION_FULL != SECCOMP_RET_ALLOW


def test_the_kernel_loads_the_program_and_applies_it() -> None:
    program = seccomp.compiled_filter(deny_new_userns=True)
    filters = ctypes.create_string_buffer(program, len(program))
    fprog = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(filters)), 16)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        outcome = b"?"
        try:
            if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) != 0:  # NO_NEW_PRIVS, SECCOMP
                outcome = b"load failed: %d" % ctypes.get_errno()
            else:
                ctypes.set_errno(0)
                refused = libc.unshare(0) == -1 and ctypes.get_errno() == errno.EPERM  # a no-op without the filter
                outcome = b"ok" if refused and os.getpid() > 0 else b"unshare was not refused"
        finally:
            os.write(write_end, outcome)
            os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 100) == b"ok"
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
