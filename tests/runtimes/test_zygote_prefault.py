"""The Python zygote's memory (runtimes/python/zygote.py). `prefault`: a stem cell copies, while
idle, the pages of its working set it still shares with its zygote, one madvise per run of
pages, and no other page; `page_runs` turns the learnt pages into those runs.
`fill_pool_holes`: after it, new small objects go to fresh pools, not to the free blocks left
all over the pages a child shares."""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
import os
import struct
import subprocess
import sys
import textwrap
from types import ModuleType

from firebox.runtimes.api import RUNTIME_DIR

PAGES = 8


def _zygote() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_zygote_under_test", RUNTIME_DIR / "python" / "zygote.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_runs_merge_contiguous_pages() -> None:
    zygote = _zygote()
    page = zygote._PAGE
    runs = zygote.page_runs({3 * page, page, 2 * page, 7 * page})
    assert list(struct.iter_unpack("QQ", runs)) == [(page, 3 * page), (7 * page, page)]
    assert zygote.page_runs(set()) == b""


def test_prefault_copies_the_shared_pages_of_the_working_set_and_no_other() -> None:
    zygote = _zygote()
    page = zygote._PAGE
    region = mmap.mmap(-1, PAGES * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.write(b"x" * PAGES * page)  # every page present, then shared with the child below
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    chosen = (1, 2, 5)
    working_set = zygote.page_runs({base + index * page for index in chosen})

    def exclusive() -> list[bool]:
        flags = dict(zygote._private_pages())
        return [flags[base + index * page] for index in range(PAGES)]

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the cell: what it holds alone before and after prefault, and its content
        try:
            before = exclusive()
            zygote.prefault(working_set)
            after = exclusive()
            intact = region[:] == b"x" * PAGES * page
            os.write(write_end, bytes(before + after + [intact]))
        finally:
            os._exit(0)
    os.close(write_end)
    report = os.read(read_end, 2 * PAGES + 1)
    os.close(read_end)
    os.waitpid(child, 0)
    assert len(report) == 2 * PAGES + 1, report
    before, after, intact = list(map(bool, report[:PAGES])), list(map(bool, report[PAGES:-1])), bool(report[-1])
    assert before == [False] * PAGES  # shared with this process after the fork
    assert after == [index in chosen for index in range(PAGES)]  # copied: those, and only those
    assert intact  # copied, not changed


def test_after_fill_pool_holes_new_objects_go_to_fresh_pages_not_to_old_holes() -> None:
    # In a fresh interpreter: 16,000 objects of one size class, every 16th freed (1,000 holes
    # over about a megabyte), then 1,000 new objects of that class. How many pages they land on.
    script = textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("_zygote_under_test", {str(RUNTIME_DIR / "python" / "zygote.py")!r})
        zygote = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(zygote)
        import sys
        kept = [bytes(31) for _ in range(16_000)]  # 64-byte blocks
        del kept[::16]
        if sys.argv[1] == "fill":
            zygote.fill_pool_holes()
        new = [bytes(31) for _ in range(1_000)]
        print(len({{id(obj) // 4096 for obj in new}}))
    """)
    pages = {how: int(subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True,
                                     check=True).stdout) for how in ("fill", "leave")}
    assert pages["leave"] > 150  # the holes: 64 KB of objects over about 250 pages
    assert pages["fill"] <= 32  # 64 KB: 16 pages, and pool boundaries (19 seen)
