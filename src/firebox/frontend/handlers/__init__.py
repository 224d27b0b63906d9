"""Operation handlers, one module per resource; `HANDLERS` maps operation names to them.

A Lambda operation of the service model that is missing here is answered with a clear
NotImplementedException by the app, never with a fake success.
"""

from __future__ import annotations

from firebox.frontend.api import Handler
from firebox.frontend.handlers import aliases, concurrency, eventconfig, functions, invoke, logs, logs_events, tags, versions

HANDLERS: dict[str, Handler] = {
    **functions.HANDLERS,
    **versions.HANDLERS,
    **aliases.HANDLERS,
    **concurrency.HANDLERS,
    **tags.HANDLERS,
    **invoke.HANDLERS,
    **eventconfig.HANDLERS,
    **logs.HANDLERS,
    **logs_events.HANDLERS,
}
