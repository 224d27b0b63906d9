"""`firebox serve` with a relative data directory (the default is `./.firebox`): sandboxes and
stem cells bind host paths under it, which must be absolute, so the server resolves it."""

from __future__ import annotations

import json
from pathlib import Path

from .helpers import create_active, make_zip, start_server, unique_name


def test_a_relative_data_dir_serves_python_and_node(tmp_path: Path) -> None:
    server = start_server(Path("relative-data"), tmp_path)  # relative to the server's cwd, tmp_path
    try:
        lam = server.client()
        python, node = unique_name("py"), unique_name("node")
        create_active(lam, python, zip_bytes=make_zip({"app.py": "def handler(e, c):\n    return 'py'\n"}))
        create_active(lam, node, Runtime="nodejs20.x", Handler="index.handler",
                      zip_bytes=make_zip({"index.js": "exports.handler = async () => 'node';\n"}))
        for name, expected in ((python, "py"), (node, "node")):
            answer = lam.invoke(FunctionName=name)
            assert "FunctionError" not in answer and json.loads(answer["Payload"].read()) == expected
        assert (tmp_path / "relative-data" / "firebox.db").is_file()
        assert "must be absolute" not in server.stderr()
    finally:
        server.stop()
