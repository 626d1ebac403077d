"""The package reads like the diagram in docs/internals.md, one floor above another: no module
imports from a floor above its own, and the Registrar and the Manager never import
each other (what both speak is on the ground floor)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: floors, lowest first; a module's floor is the first whose prefix names it
FLOORS = (
    # "warden" itself: the package's __init__ (its version)
    ("ground", ("warden", "warden.errors", "warden.jsonfile", "warden.model", "warden.names", "warden.signals", "warden.control",
                "warden.config", "warden.services", "warden.labels", "warden.policy")),
    ("runtime", ("warden.runtime",)),
    ("subscribers", ("warden.subscribers",)),
    ("cores", ("warden.registrar", "warden.manager")),
    ("handlers", ("warden.handlers",)),
    ("entrance", ("warden.cli", "warden.daemon", "warden.status", "warden.metrics", "warden.__main__")),
)


def floor_of(module: str) -> int:
    for level, (_, prefixes) in enumerate(FLOORS):
        if any(module == p or (p != "warden" and module.startswith(p + ".")) for p in prefixes):
            return level
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in ((ROOT / "warden", "warden"), (ROOT / "handlers", "warden.handlers")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("warden"):
            for alias in node.names:
                names.add(f"{node.module}.{alias.name}" if node.module == "warden" else node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("warden"))
    return names


def test_no_module_imports_from_a_floor_above_its_own():
    known = modules()
    upward = []
    for module, path in sorted(known.items()):
        for name in sorted(imports(path)):
            target = name if name in known else name.rpartition(".")[0]
            if floor_of(target) > floor_of(module):
                upward.append(f"{module} ({FLOORS[floor_of(module)][0]}) imports {target} "
                              f"({FLOORS[floor_of(target)][0]})")
    assert not upward, "\n".join(upward)


def test_the_registrar_and_the_manager_do_not_import_each_other():
    crossing = [f"{module} imports {name}" for module, path in modules().items() for name in imports(path)
                if (module.startswith("warden.registrar") and name.startswith("warden.manager"))
                or (module.startswith("warden.manager") and name.startswith("warden.registrar"))]
    assert not crossing, "\n".join(crossing)
