"""Sandbox output not yet recorded (worker/pendingoutput.py `PendingOutput`): bytes still in a
pipe or in a reader's buffer count, a drained pipe does not, a closed one is dropped, and a
pipe numbered past 1023 (a busy server's) works, which select() could not."""

from __future__ import annotations

import asyncio
import os
import resource

import pytest

from firebox.worker.pendingoutput import PendingOutput


async def _reader_on(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    return reader


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _scenario(read_fd: int, write_fd: int) -> None:
    async def main() -> None:
        reader = await _reader_on(read_fd)
        pending = PendingOutput((reader,))
        assert pending.complete
        assert not pending()
        os.write(write_fd, b"line\n")
        assert pending()  # in the pipe, or already in the reader's buffer
        await _settle()
        assert await reader.readline() == b"line\n"
        assert not pending()
        os.close(write_fd)
        assert await reader.read() == b""
        await _settle()  # the transport closes at EOF
        assert not pending()
        assert pending._watched == {}

    asyncio.run(main())


def test_pipe_contents_count_until_read_and_a_closed_pipe_is_dropped() -> None:
    read_fd, write_fd = os.pipe()
    _scenario(read_fd, write_fd)


def test_a_pipe_past_fd_1023_works() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below 2100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100), hard))
    try:
        read_fd, write_fd = os.pipe()
        high = os.dup2(read_fd, 2048)
        os.close(read_fd)
        _scenario(high, write_fd)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
