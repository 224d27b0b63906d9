"""SqliteMetadataStore: the Tx operations, atomicity, durability across reopening, serialization."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from firebox.errors import StoreError
from firebox.store.api import Tx
from firebox.store.sqlite import (
    _WAL_BYTES,
    SCHEMA_VERSION,
    SYNC_HERE_MAX_S,
    SqliteMetadataStore,
    SqliteStatistics,
)


def run(coro):
    return asyncio.run(coro)


async def opened(path: Path) -> SqliteMetadataStore:
    store = SqliteMetadataStore(path)
    await store.open()
    return store


def test_open_creates_parent_dirs_wal_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "meta.db"

    async def main() -> None:
        store = await opened(path)
        await store.close()

    run(main())
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {name for (name,) in rows}
        assert {"records", "sequences"} <= tables
    finally:
        conn.close()


def test_put_get_insert_delete(tmp_path: Path) -> None:
    def work(tx: Tx) -> None:
        assert tx.get("function", "acct", "f") is None
        tx.put("function", "acct", "f", {"Name": "f", "n": 1, "nested": {"é": [1, 2]}})
        assert tx.get("function", "acct", "f") == {"Name": "f", "n": 1, "nested": {"é": [1, 2]}}
        tx.put("function", "acct", "f", {"Name": "f", "n": 2})
        assert tx.get("function", "acct", "f") == {"Name": "f", "n": 2}
        assert tx.insert("function", "acct", "f", {"n": 3}) is False
        assert tx.get("function", "acct", "f") == {"Name": "f", "n": 2}
        assert tx.insert("function", "acct", "g", {"n": 4}) is True
        # kind and scope are part of the address
        assert tx.get("alias", "acct", "f") is None
        assert tx.get("function", "other", "f") is None
        assert tx.delete("function", "acct", "f") is True
        assert tx.delete("function", "acct", "f") is False
        assert tx.get("function", "acct", "f") is None

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        await store.atomically(work)
        assert await store.read(lambda tx: tx.get("function", "acct", "g")) == {"n": 4}
        await store.close()

    run(main())


def test_move_rekeys_a_record_in_one_write(tmp_path: Path) -> None:
    def work(tx: Tx) -> None:
        tx.put("event", "f", "001:a", {"n": 1})
        tx.put("event", "f", "002:b", {"n": 2})
        assert tx.move("event", "f", "001:a", "009:a", {"n": 10}) is True
        assert tx.scan("event", "f") == [("002:b", {"n": 2}), ("009:a", {"n": 10})]
        assert tx.move("event", "f", "001:a", "010:a", {"n": 11}) is False  # gone: nothing written
        assert tx.move("event", "g", "002:b", "010:b", {"n": 12}) is False  # scope is part of the address
        assert tx.move("event", "f", "009:a", "009:a", {"n": 13}) is True  # same key: a new document
        assert tx.count("event") == 2 and tx.get("event", "f", "009:a") == {"n": 13}

    def collide(tx: Tx) -> None:
        tx.move("event", "f", "002:b", "009:a", {"n": 14})

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        await store.atomically(work)
        with pytest.raises(StoreError):
            await store.atomically(collide)
        assert await store.read(lambda tx: tx.scan("event", "f")) == [("002:b", {"n": 2}), ("009:a", {"n": 13})]
        await store.close()

    run(main())


def test_returned_documents_are_copies(tmp_path: Path) -> None:
    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        await store.atomically(lambda tx: tx.put("k", "s", "a", {"x": [1]}))
        doc = await store.read(lambda tx: tx.get("k", "s", "a"))
        doc["x"].append(2)
        assert await store.read(lambda tx: tx.get("k", "s", "a")) == {"x": [1]}
        await store.close()

    run(main())


def test_scan_values_reads_one_field_of_each_record_in_key_order(tmp_path: Path) -> None:
    def fill(tx: Tx) -> None:
        tx.put("event", "fn1", "b", {"owner": "run-2", "n": 2, "payload": "x" * 1000})
        tx.put("event", "fn1", "a", {"owner": None, "n": 1.5})
        tx.put("event", "fn1", "c", {"n": 3, "flag": True})  # no owner at all
        tx.put("event", "fn2", "a", {"owner": "elsewhere"})

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        await store.atomically(fill)

        def check(tx: Tx) -> None:
            assert tx.scan_values("event", "fn1", "owner") == [("a", None), ("b", "run-2"), ("c", None)]
            assert tx.scan_values("event", "fn1", "n") == [("a", 1.5), ("b", 2), ("c", 3)]
            assert tx.scan_values("event", "fn1", "flag") == [("a", None), ("b", None), ("c", 1)]
            assert tx.scan_values("event", "nope", "owner") == []
            for bad in ("", "a.b", "a[0]", '"x"', "$"):
                with pytest.raises(ValueError, match="not a field name"):
                    tx.scan_values("event", "fn1", bad)

        await store.read(check)
        await store.close()

    asyncio.run(main())


def test_scan_order_after_limit_scopes_count_delete_scope(tmp_path: Path) -> None:
    def fill(tx: Tx) -> None:
        for key in ["b", "a", "c", "B", "aa", "0003", "0010"]:
            tx.put("version", "fn1", key, {"k": key})
        tx.put("version", "fn2", "x", {"k": "x"})
        tx.put("alias", "fn0", "y", {"k": "y"})

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        await store.atomically(fill)

        def check(tx: Tx) -> None:
            keys = [key for key, _ in tx.scan("version", "fn1")]
            assert keys == ["0003", "0010", "B", "a", "aa", "b", "c"]  # byte order
            first_two = [("0003", {"k": "0003"}), ("0010", {"k": "0010"})]
            assert tx.scan("version", "fn1", limit=2) == first_two
            assert [k for k, _ in tx.scan("version", "fn1", after="a")] == ["aa", "b", "c"]
            assert [k for k, _ in tx.scan("version", "fn1", after="a", limit=1)] == ["aa"]
            assert tx.scan("version", "fn1", after="c") == []
            assert tx.scan("version", "fn1", limit=0) == []
            assert tx.scan("version", "nope") == []
            assert tx.scopes("version") == ["fn1", "fn2"]
            assert tx.scopes("alias") == ["fn0"]
            assert tx.scopes("nothing") == []
            assert tx.count("version") == 8
            assert tx.count("version", "fn1") == 7
            assert tx.count("version", "nope") == 0

        await store.read(check)
        assert await store.atomically(lambda tx: tx.delete_scope("version", "fn1")) == 7
        assert await store.atomically(lambda tx: tx.delete_scope("version", "fn1")) == 0
        left = await store.read(lambda tx: (tx.scopes("version"), tx.count("version")))
        assert left == (["fn2"], 1)
        assert await store.read(lambda tx: tx.count("alias")) == 1
        with pytest.raises(ValueError):
            await store.read(lambda tx: tx.scan("version", "fn2", limit=-1))
        await store.close()

    run(main())


def test_next_sequence_never_reuses_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "m.db"

    def publish(tx: Tx) -> int:
        number = tx.next_sequence("version:fn")
        tx.put("version", "fn", f"{number:010d}", {"Version": str(number)})
        return number

    async def first() -> None:
        store = await opened(path)
        assert [await store.atomically(publish) for _ in range(3)] == [1, 2, 3]
        assert await store.atomically(lambda tx: tx.next_sequence("other")) == 1
        await store.atomically(lambda tx: tx.delete_scope("version", "fn"))
        assert await store.atomically(publish) == 4
        await store.close()

    async def second() -> None:
        store = await opened(path)
        await store.atomically(lambda tx: tx.delete_scope("version", "fn"))
        assert await store.atomically(publish) == 5
        assert await store.atomically(lambda tx: tx.next_sequence("other")) == 2
        await store.close()

    run(first())
    run(second())


def test_exception_rolls_back_everything_and_propagates_unchanged(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    def work(tx: Tx) -> None:
        tx.put("k", "s", "a", {"v": 1})
        tx.next_sequence("seq")
        tx.delete("k", "s", "keep")
        raise Boom("unchanged")

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        await store.atomically(lambda tx: tx.put("k", "s", "keep", {"v": 0}))
        with pytest.raises(Boom, match="unchanged"):
            await store.atomically(work)

        def check(tx: Tx) -> None:
            assert tx.get("k", "s", "a") is None
            assert tx.get("k", "s", "keep") == {"v": 0}

        await store.read(check)
        # the sequence increment was rolled back too
        assert await store.atomically(lambda tx: tx.next_sequence("seq")) == 1
        assert store.statistics() == SqliteStatistics(
            transactions_committed=2, transactions_rolled_back=1, reads=1
        )
        await store.close()

    run(main())


def test_read_refuses_writes(tmp_path: Path) -> None:
    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        writes = [
            lambda tx: tx.put("k", "s", "a", {}),
            lambda tx: tx.insert("k", "s", "a", {}),
            lambda tx: tx.delete("k", "s", "a"),
            lambda tx: tx.delete_scope("k", "s"),
            lambda tx: tx.next_sequence("n"),
        ]
        for write in writes:
            with pytest.raises(StoreError):
                await store.read(write)
        assert await store.read(lambda tx: tx.count("k")) == 0
        assert await store.atomically(lambda tx: tx.next_sequence("n")) == 1
        await store.close()

    run(main())


def test_swallowed_store_error_still_rolls_back(tmp_path: Path) -> None:
    def work(tx: Tx) -> str:
        tx.put("k", "s", "a", {"v": 1})
        try:
            tx.put("k", "s", None, {"v": 2})  # type: ignore[arg-type]  # NOT NULL violation
        except StoreError:
            pass
        return "carried on"

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        with pytest.raises(StoreError):
            await store.atomically(work)
        assert await store.read(lambda tx: tx.count("k")) == 0
        await store.close()

    run(main())


def test_bad_documents_and_async_units_are_refused(tmp_path: Path) -> None:
    async def not_a_unit(tx: Tx) -> None:
        tx.put("k", "s", "a", {})

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        with pytest.raises(TypeError):
            await store.atomically(lambda tx: tx.put("k", "s", "a", ["not", "a", "dict"]))
        with pytest.raises(ValueError):
            await store.atomically(lambda tx: tx.put("k", "s", "a", {"x": float("nan")}))
        with pytest.raises(TypeError, match="plain function"):
            await store.atomically(not_a_unit)
        assert await store.read(lambda tx: tx.count("k")) == 0
        await store.close()

    run(main())


def test_leaked_tx_is_dead(tmp_path: Path) -> None:
    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        leaked = await store.atomically(lambda tx: tx)
        with pytest.raises(StoreError):
            leaked.get("k", "s", "a")
        await store.close()

    run(main())


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "m.db"

    async def write() -> None:
        store = await opened(path)
        await store.atomically(lambda tx: tx.put("function", "acct", "f", {"Runtime": "py"}))
        await store.close()

    async def check() -> None:
        store = await opened(path)
        assert await store.read(lambda tx: tx.get("function", "acct", "f")) == {"Runtime": "py"}
        await store.close()

    run(write())
    run(check())


def test_close_is_idempotent_and_use_after_close_or_before_open_fails(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteMetadataStore(tmp_path / "m.db")
        with pytest.raises(StoreError, match="not open"):
            await store.read(lambda tx: tx.count("k"))
        await store.open()
        with pytest.raises(StoreError):
            await store.open()
        pending = asyncio.ensure_future(store.atomically(lambda tx: tx.put("k", "s", "a", {})))
        await asyncio.sleep(0)  # submitted before close: it must finish, not be dropped
        await asyncio.gather(store.close(), store.close())
        await pending
        await store.close()
        with pytest.raises(StoreError, match="closed"):
            await store.atomically(lambda tx: tx.count("k"))

    run(main())
    # the write queued before close() landed
    conn = sqlite3.connect(tmp_path / "m.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 1
    finally:
        conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    async def main() -> None:
        store = SqliteMetadataStore(path)
        with pytest.raises(StoreError, match="schema version"):
            await store.open()
        await store.close()

    run(main())


def test_concurrent_units_are_serialized(tmp_path: Path) -> None:
    def increment(tx: Tx) -> int:
        doc = tx.get("counter", "s", "c") or {"n": 0}
        doc["n"] += 1
        tx.put("counter", "s", "c", doc)
        return tx.next_sequence("seq")

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        numbers = await asyncio.gather(*(store.atomically(increment) for _ in range(200)))
        assert sorted(numbers) == list(range(1, 201))
        assert await store.read(lambda tx: tx.get("counter", "s", "c")) == {"n": 200}
        assert store.statistics().transactions_committed == 200
        await store.close()

    run(main())


def test_scopes_of_many_records_in_a_few_scopes_between_other_kinds(tmp_path: Path) -> None:
    # scopes() seeks from one scope to the next instead of reading every record: check it
    # against the plain answer with neighbouring kinds, empty and non-ASCII scopes.
    scopes = ["", "a", "a\x00", "b", "é", "日本"]

    def fill(tx: Tx) -> None:
        for scope in scopes:
            for n in range(50):
                tx.put("event", scope, f"{n:04d}", {"n": n})
            tx.put("evenT", scope, "x", {})
            tx.put("eventz", scope + "!", "x", {})

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        await store.atomically(fill)
        assert await store.read(lambda tx: tx.scopes("event")) == sorted(scopes, key=str.encode)
        assert await store.read(lambda tx: tx.scopes("eventz")) == sorted((s + "!" for s in scopes), key=str.encode)
        await store.atomically(lambda tx: tx.delete_scope("event", "b"))
        assert "b" not in await store.read(lambda tx: tx.scopes("event"))
        await store.close()

    run(main())


def _synchronous(store: SqliteMetadataStore) -> int:
    conn = store._conn  # white box: the writer's connection, read inside a write unit
    assert conn is not None
    return conn.execute("PRAGMA synchronous").fetchone()[0]


def test_a_durable_unit_returns_once_its_wal_is_fsynced_and_a_non_durable_one_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    normal = 1
    synced: list[int] = []  # inodes fdatasync'd
    real_fdatasync = os.fdatasync

    def recording_fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        synced.append(os.fstat(fd).st_ino)

    monkeypatch.setattr(os, "fdatasync", recording_fdatasync)

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        wal_inode = os.stat(tmp_path / "m.db-wal").st_ino
        synced.clear()
        # Every commit is at NORMAL; durability is the fsync of the WAL that follows it.
        assert await store.atomically(lambda tx: (tx.put("k", "s", "a", {}), _synchronous(store))[1]) == normal
        assert synced == [wal_inode]
        assert await store.atomically(lambda tx: (tx.put("k", "s", "b", {}), _synchronous(store))[1],
                                      durable=False) == normal
        assert synced == [wal_inode]
        # A non-durable commit is committed: reads and other connections see it at once.
        assert await store.read(lambda tx: tx.count("k")) == 2
        other = sqlite3.connect(tmp_path / "m.db")
        try:
            assert other.execute("SELECT COUNT(*) FROM records WHERE kind = 'k'").fetchone()[0] == 2
        finally:
            other.close()
        await store.close()

    run(main())


def _recording_fsyncs(monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0,
                      hold: threading.Event | None = None) -> list[str]:
    """Record the name of the thread of every fdatasync; each takes at least `delay_s`, and
    waits for `hold` when given."""
    threads: list[str] = []
    real_fdatasync = os.fdatasync

    def recording(fd: int) -> None:
        if hold is not None:
            hold.wait(10)
        time.sleep(delay_s)
        real_fdatasync(fd)
        threads.append(threading.current_thread().name)

    monkeypatch.setattr(os, "fdatasync", recording)
    return threads


def test_sync_here_fsyncs_on_the_callers_thread_and_otherwise_the_sync_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        threads = _recording_fsyncs(monkeypatch)
        await store.atomically(lambda tx: tx.put("k", "s", "a", {}))
        await store.atomically(lambda tx: tx.put("k", "s", "b", {}), sync_here=True)
        await store.atomically(lambda tx: tx.put("k", "s", "c", {}), durable=False, sync_here=True)
        main_thread = threading.current_thread().name
        assert len(threads) == 2
        assert threads[0].startswith("firebox-sqlite-sync") and threads[1] == main_thread
        assert await store.read(lambda tx: tx.count("k")) == 3
        await store.close()

    run(main())


def test_after_a_slow_fsync_sync_here_goes_back_to_the_sync_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that turned slow would hold the event loop: its next fsyncs run on the sync thread
    until one is quick again."""

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        threads = _recording_fsyncs(monkeypatch, delay_s=2 * SYNC_HERE_MAX_S)  # at least that slow
        main_thread = threading.current_thread().name
        await store.atomically(lambda tx: tx.put("k", "s", "a", {}), sync_here=True)  # after a quick one
        await store.atomically(lambda tx: tx.put("k", "s", "b", {}), sync_here=True)  # after a slow one
        assert threads[0] == main_thread and threads[1].startswith("firebox-sqlite-sync")
        monkeypatch.undo()
        threads = _recording_fsyncs(monkeypatch)
        await store.atomically(lambda tx: tx.put("k", "s", "c", {}), sync_here=True)  # still after a slow one
        await store.atomically(lambda tx: tx.put("k", "s", "d", {}), sync_here=True)  # the disk is quick again
        assert threads[0].startswith("firebox-sqlite-sync") and threads[1] == main_thread
        await store.close()

    run(main())


def test_sync_here_waits_for_an_fsync_running_on_the_sync_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two threads never sync at once: while the sync thread's fsync runs, a `sync_here`
    commit's fsync queues behind it there, and the event loop is not held meanwhile."""

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        hold = threading.Event()
        threads = _recording_fsyncs(monkeypatch, hold=hold)
        first = asyncio.create_task(store.atomically(lambda tx: tx.put("k", "s", "a", {})))
        await asyncio.sleep(0)  # its unit committed, its fsync held on the sync thread
        second = asyncio.create_task(store.atomically(lambda tx: tx.put("k", "s", "b", {}), sync_here=True))
        await asyncio.sleep(0)
        assert not second.done()  # the loop was not held: it is here, running this test
        hold.set()
        await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
        assert len(threads) == 2 and all(name.startswith("firebox-sqlite-sync") for name in threads)
        await store.close()

    run(main())


def test_a_failed_fsync_is_a_store_error_for_the_durable_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        store = await opened(tmp_path / "m.db")

        def failing(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(StoreError, match="fsync"):
            await store.atomically(lambda tx: tx.put("k", "s", "a", {}))
        await store.atomically(lambda tx: tx.put("k", "s", "b", {}), durable=False)
        monkeypatch.undo()
        await store.close()

    run(main())


def test_reads_see_every_committed_write_and_never_wait_for_one(tmp_path: Path) -> None:
    """Reads run on their own connection: a read that runs while a write unit is running sees
    the state before it, and completes without waiting for it; once the write returns, every
    later read sees it."""

    async def main() -> None:
        store = await opened(tmp_path / "m.db")
        await store.atomically(lambda tx: tx.put("k", "s", "a", {"n": 0}))
        reader = store._reader  # white box: the read runs on its thread while the unit runs here
        assert reader is not None

        def write_and_read_meanwhile(tx: Tx) -> Any:
            tx.put("k", "s", "a", {"n": 1})
            return reader.submit(store._run_read, lambda rtx: rtx.get("k", "s", "a")).result(timeout=10)

        assert await store.atomically(write_and_read_meanwhile) == {"n": 0}
        assert await store.read(lambda tx: tx.get("k", "s", "a")) == {"n": 1}
        assert store.statistics().reads == 2
        await store.close()

    run(main())


def test_the_wal_is_presized_and_recovers_after_a_crash(tmp_path: Path) -> None:
    """The WAL is zero-filled to its working size at open; SQLite still finds exactly the
    committed frames in it after a crash (the process dies without closing anything)."""
    path = tmp_path / "m.db"
    crash = f"""
import asyncio, os, sys
from pathlib import Path
from firebox.store.sqlite import SqliteMetadataStore

async def main():
    store = SqliteMetadataStore(Path({str(path)!r}))
    await store.open()
    for n in range(30):
        await store.atomically(lambda tx, n=n: tx.put("k", "s", f"{{n:03d}}", {{"n": n}}), durable=n % 2 == 0)
    print(os.path.getsize({str(path)!r} + "-wal"), flush=True)
    os._exit(0)

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=60, check=True)
    assert int(done.stdout) >= _WAL_BYTES

    async def main() -> None:
        store = await opened(path)
        rows = await store.read(lambda tx: tx.scan("k", "s"))
        assert [doc["n"] for _, doc in rows] == list(range(30))
        await store.atomically(lambda tx: tx.put("k", "s", "after", {}))
        await store.close()
        assert not Path(str(path) + "-wal").exists()  # a clean close still removes it

    run(main())
