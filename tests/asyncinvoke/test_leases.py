"""Claims are leases (api.py): "a claim is a lease that expires, so events claimed by a
dispatcher that died become due again". This is what lets several dispatchers share one queue
(PostgreSQL's FOR UPDATE SKIP LOCKED later) without losing an event when one of them dies.

A dead dispatcher is simulated by writing, into the running server's store, an event claimed
by another run whose lease has already ended: the row a dispatcher that claimed it and died
would leave (layout of queue.py: kind `async-event`, scope the function name, key
`<due ms, 15 digits>:<request id>`, a claimed event's due time being its lease end)."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import uuid
from typing import Any

from tests.e2e.helpers import FireboxServer

from .support import create_worker, logs_client, poll, runs, send_event


def _insert_expired_claim(server: FireboxServer, name: str, payload: dict[str, Any]) -> str:
    request_id = str(uuid.uuid4())
    now = int(time.time() * 1000)
    lease_end = now - 1000  # the lease ended a second ago
    doc = {"request_id": request_id, "function_name": name, "qualifier": None,
           "payload": base64.b64encode(json.dumps(payload).encode()).decode(),
           "enqueued_at_ms": now - 5000, "due_ms": lease_end, "attempts": 0, "system_retries": 0,
           "claimed_by": "a-dispatcher-that-died"}
    db = sqlite3.connect(server.data_dir / "firebox.db", timeout=10)
    try:
        db.execute("INSERT INTO records (kind, scope, key, doc) VALUES ('async-event', ?, ?, ?)",
                   (name, f"{lease_end:015d}:{request_id}", json.dumps(doc, separators=(",", ":"))))
        db.commit()
    finally:
        db.close()
    return request_id


def test_expired_claim_of_a_dead_dispatcher_runs_and_does_not_block_newer_events(server_factory: Any) -> None:
    srv = server_factory()
    lam, logs = srv.client(), logs_client(srv)
    name = create_worker(lam, prefix="lease")
    send_event(lam, name, {"warm": True})  # the function works, and has run through the queue
    poll(lambda: runs(logs, name), deadline_s=30, what="the first event to run")

    orphan = _insert_expired_claim(srv, name, {"orphan": True})
    fresh = send_event(lam, name, {"fresh": True})
    seen: set[str] = set()

    def both_ran() -> bool:
        seen.update(r.request_id for r in runs(logs, name))
        return {orphan, fresh} <= seen

    try:
        poll(both_ran, deadline_s=20, what="the event of the expired claim and a newer event to run")
    finally:
        print(f"\nleases: expired-claim event ran: {orphan in seen}; newer event ran: {fresh in seen}")
