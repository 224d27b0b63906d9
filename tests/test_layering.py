"""The dependency direction of ANATOMY.md, checked by reading every module's imports.

Rules (a module "in component A" is any module under `src/firebox/A/`):

1. `runtimes` imports only the standard library: its code runs inside sandboxes, in the
   function's own interpreter, where nothing of the platform is installed.
2. A module of component A imports another component B only if B is in `ALLOWED[A]`, and only
   through B's contract, `firebox.B.api` (or names in it), never B's other modules.
3. Top-level modules other than the composition roots (`errors`, `settings`, `codezip`,
   `arns`, ...) are shared leaves: any component may import them, and they import no component.
4. Only the composition roots (`firebox.wiring`, `firebox.server`, `firebox.cli`) import
   concrete modules of components; nothing imports `firebox.cli` (the console script and
   `firebox/__main__.py` aside); only `firebox.server` and `firebox.cli` import `firebox.wiring`.

Every import counts: inside functions and inside `if TYPE_CHECKING:` blocks too, absolute or
relative. `from firebox.x import y` is taken as importing `firebox.x.y` (a module or a name in
`firebox.x`: either way it reaches into `x`).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "firebox"

ALLOWED: dict[str, frozenset[str]] = {
    "frontend": frozenset({"control", "invoker", "asyncinvoke", "logs"}),
    "invoker": frozenset({"control", "counter", "workers", "logs"}),
    "asyncinvoke": frozenset({"invoker", "control", "store"}),
    "workers": frozenset({"placement", "worker"}),
    "placement": frozenset({"worker"}),
    "worker": frozenset({"runtimes", "store", "logs"}),
    "control": frozenset({"store", "worker"}),
    "counter": frozenset(),
    "logs": frozenset({"store"}),
    "store": frozenset(),
    "runtimes": frozenset(),
}
COMPONENTS = frozenset(ALLOWED)
ROOTS = frozenset({"wiring", "server", "cli"})


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    imported: str
    reason: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: imports {self.imported}: {self.reason}"


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in `source`, the text of `module`."""
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                names.append((node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"))
    return sorted(names)  # ast.walk goes breadth first


def check_source(source: str, module: str, is_package: bool = False) -> list[Violation]:
    """The violations of the rules above by `module`, whose text is `source`."""
    here = module.split(".")
    own = here[1] if len(here) > 1 else None  # component or top-level module name
    found = []
    for line, name in imported_names(source, module, is_package):
        reason = _violation(own, module, name)
        if reason:
            found.append(Violation(module, line, name, reason))
    return found


def _violation(own: str | None, module: str, name: str) -> str | None:
    parts = name.split(".")
    if own == "runtimes":
        if parts[0] in sys.stdlib_module_names:
            return None
        return "runtimes may import only the standard library"
    if parts[0] != "firebox" or len(parts) == 1:
        return None  # standard library, third party, or the bare `firebox` package
    target = parts[1]
    if target == "cli" and module not in ("firebox.cli", "firebox.__main__"):
        return "nothing imports firebox.cli"
    if target == "wiring" and own not in ("server", "cli", "wiring"):
        return "only firebox.server and firebox.cli import firebox.wiring"
    if own in ROOTS or module == "firebox.__main__":
        return None  # composition roots may import anything else
    if target not in COMPONENTS:
        if target in ROOTS:
            return f"only composition roots import firebox.{target}"
        return None  # a shared leaf module
    if own not in COMPONENTS:
        return "shared top-level modules import no component (they are leaves)"
    if target == own:
        return None
    if target not in ALLOWED[own]:
        allowed = ", ".join(sorted(ALLOWED[own])) or "none"
        return f"{own} may not depend on {target} (allowed: {allowed})"
    if len(parts) < 3 or parts[2] != "api":
        return f"import firebox.{target}.api, the contract, not firebox.{target}'s internals"
    return None


def source_modules() -> list[tuple[str, Path, bool]]:
    """(dotted name, path, is package) of every module under src/firebox."""
    modules = []
    for path in sorted(SRC.rglob("*.py")):
        parts = ("firebox", *path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules.append((".".join(parts[:-1] if is_package else parts), path, is_package))
    return modules


def test_the_source_tree_is_found() -> None:
    names = {name for name, _, _ in source_modules()}
    assert "firebox.settings" in names, f"no modules found under {SRC}"


def test_every_subpackage_is_a_known_component() -> None:
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    unknown = sorted(folders - COMPONENTS)
    assert not unknown, f"sub-packages {unknown} are no component: add them to ALLOWED here"


def test_dependency_direction() -> None:
    violations = []
    for module, path, is_package in source_modules():
        violations += check_source(path.read_text(encoding="utf-8"), module, is_package)
    assert not violations, "layering violations:\n" + "\n".join(map(str, violations))


# --- the checker checks: it cannot pass by seeing nothing ---------------------------------

VIOLATING = """\
from typing import TYPE_CHECKING
import firebox.worker.sandbox
from firebox.control import registry
from ..counter import api
from firebox import wiring
from firebox.cli import main
from firebox.control.api import FunctionStore, Registry
from firebox.errors import ResourceNotFound
from . import parse
from .responses import to_http
import json, boto3

def late():
    from firebox.server import serve

if TYPE_CHECKING:
    from firebox.placement.api import Placement
"""


def test_checker_catches_every_violation() -> None:
    found = check_source(VIOLATING, "firebox.frontend.handlers")
    assert [(v.line, v.imported) for v in found] == [
        (2, "firebox.worker.sandbox"),  # not an allowed dependency
        (3, "firebox.control.registry"),  # allowed, but not through the contract
        (4, "firebox.counter.api"),  # relative, resolved against the package
        (5, "firebox.wiring"),
        (6, "firebox.cli.main"),
        (14, "firebox.server.serve"),  # inside a function
        (17, "firebox.placement.api.Placement"),  # inside `if TYPE_CHECKING:`
    ], "\n".join(map(str, found))


@pytest.mark.parametrize(
    ("module", "source", "caught"),
    [
        ("firebox.runtimes.python.bootstrap", "import json, urllib.request", False),
        ("firebox.runtimes.python.bootstrap", "import boto3", True),
        ("firebox.runtimes.python.bootstrap", "from firebox.errors import FireboxError", True),
        ("firebox.runtimes.python.bootstrap", "from . import protocol", True),
        ("firebox.errors", "from firebox.control.api import Registry", True),
        ("firebox.codezip", "from .errors import InvalidParameterValue", False),
        ("firebox.wiring", "from firebox.worker.bwrap import BwrapBackend", False),
        ("firebox.server", "from firebox import wiring", False),
        ("firebox.server", "from firebox.cli import main", True),
        ("firebox.control.registry", "from ..worker.api import CodeCache", False),
        ("firebox.worker.sandbox", "from ..store.api import BlobStore", False),
        ("firebox.worker.sandbox", "import firebox.store.sqlite", True),
        ("firebox.store.sqlite", "from ..control.api import Function", True),
    ],
)
def test_checker_rules(module: str, source: str, caught: bool) -> None:
    assert bool(check_source(source, module)) is caught


def test_relative_imports_in_a_package_init() -> None:
    source = "from . import api\nfrom .. import errors\nfrom ..worker import api as w"
    assert imported_names(source, "firebox.control", is_package=True) == [
        (1, "firebox.control.api"),
        (2, "firebox.errors"),
        (3, "firebox.worker.api"),
    ]
