#!/usr/bin/env python3
"""The import graph between medvault's packages, and the arrows the layering forbids.

    python scripts/import_graph.py          print every arrow (with counts), then violations
    python scripts/import_graph.py --check  print only violations; exit 1 if there are any

Each top-level part of src/medvault (a package such as `repository`, or a module such as
`errors`) is a node. An arrow A -> B means some module of A imports B at run time; imports
under `if TYPE_CHECKING:` are types only and do not count. The rules are in ALLOWED: for each
node, the nodes it may import. Data flows one way through the layers (docs/architecture.md):
a layer imports only the ones below it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "medvault"

# Beside the layers, usable by any of them: small modules without medvault imports of their
# own beyond each other.
COMMON = {
    "errors",
    "faults",
    "durations",
    "sizes",
    "clocks",
    "processes",
    "configfile",
    "childenv",
    "dirpath",
    "statedir",
    "sizes",
    "__init__",
}
ALLOWED: dict[str, set[str]] = {
    "backends": set(),
    "repository": {"backends"},
    "postgres": set(),
    # Redis's own rules: RESP, the replication handshake, RDB framing, scratch servers.
    "redisdb": set(),
    "policy": {"repository", "backends"},
    "sources": {"repository", "postgres", "redisdb", "policy"},
    "recovery": {"repository", "postgres", "redisdb"},
    "verification": {"recovery", "repository", "postgres", "redisdb", "policy"},
    "config": {"backends", "policy", "scheduler"},
    # When jobs fire (cron expressions, intervals, time zones, catch-up) and the loop that
    # runs them: pure logic over an injectable clock; config validates schedules with it.
    "scheduler": set(),
    # Alert rules, metrics and notification channels over facts the service gathered.
    "monitoring": {"config"},
    "credentials": {"repository", "config"},
    # medvault.toml's layout for the WAL path, read without pydantic; medvault.config when
    # anything is unusual.
    "walconfig": {"config"},
    # The index of run records (SQLAlchemy): repository for catching up from the audit chains.
    "catalog": {"config", "repository"},
    "service": {
        "catalog",
        "monitoring",
        "scheduler",
        "sources",
        "recovery",
        "verification",
        "policy",
        "repository",
        "backends",
        "postgres",
        "redisdb",
        "config",
        "credentials",
        "walconfig",
    },
    "cli": {"service", "config", "walconfig", "credentials", "api"},
    # The HTTP shell: like cli, it renders what service functions return.
    "api": {"service", "config", "credentials"},
}
# Arrows that stand for a reason of their own, each said here: (importing module, node), the
# module named below its top-level part (`cli.wal` is src/medvault/cli/wal.py) so that an
# exception covers that module and no other of its package.
EXCEPTIONS: set[tuple[str, str]] = set()
# None today: wal-push and wal-fetch (cli/entry.py, cli/wal.py) run through
# medvault.service.wal, whose module-level imports are light, and that service reads
# medvault.toml through walconfig and opens the repository through Session.open_target, so
# the fast path needs no arrow of its own. Should a measured need arise, name the module:
# ("cli.wal", "sources"), never ("cli", "sources").


def node_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "medvault" or len(parts) < 2:
        return None
    return parts[1]


def runtime_imports(path: Path, package: str) -> list[str]:
    """Modules imported by `path` outside `if TYPE_CHECKING:` blocks, made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit_stmt(sub)
                continue
            visit_stmt(child)

    def visit_stmt(child: ast.AST) -> None:
        if isinstance(child, ast.Import):
            found.extend(alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = package.split(".")[: len(package.split(".")) - child.level + 1]
                found.append(".".join([*base, *([child.module] if child.module else [])]))
            elif child.module:
                found.append(child.module)
        visit(child)

    visit(tree)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def arrows() -> Counter[tuple[str, str, str]]:
    """(node, node, importing module) -> how many imports."""
    counted: Counter[tuple[str, str, str]] = Counter()
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(relative.parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        source = node_of(module)
        if source is None:
            continue
        for imported in runtime_imports(path, package):
            target = node_of(imported)
            if target is not None and target != source:
                counted[(source, target, module.removeprefix("medvault."))] += 1
    return counted


def excepted(module: str, target: str) -> bool:
    return any(
        (module == named or module.startswith(named + ".")) and target == node
        for named, node in EXCEPTIONS
    )


def forbidden(source: str, target: str, module: str) -> bool:
    if target in COMMON or excepted(module, target):
        return False
    if source in COMMON:
        return target not in COMMON
    return target not in ALLOWED.get(source, set())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only the forbidden arrows")
    args = parser.parse_args()
    counted = arrows()
    per_arrow: Counter[tuple[str, str]] = Counter()
    for (source, target, _module), count in counted.items():
        per_arrow[(source, target)] += count
    if not args.check:
        for (source, target), count in sorted(per_arrow.items()):
            print(f"{source:>14} -> {target:<14} {count:>3}")
    modules: dict[tuple[str, str], list[str]] = {}
    for source, target, module in sorted(counted):
        if forbidden(source, target, module):
            modules.setdefault((source, target), []).append(module)
    bad = sorted(modules)
    for source, target in bad:
        print(
            f"forbidden: {source} -> {target} ({per_arrow[(source, target)]} imports, "
            f"in {', '.join(modules[(source, target)])})"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
