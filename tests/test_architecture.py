"""The dependency direction, read from the imports of every module (ast only).

Domains (claw's conversations, knowledge, writing) -> tasks_app (the platform) ->
Django and Celery. claw/settings.py, claw/celery.py and claw/urls.py (with the
package itself, wsgi, asgi and the test settings) are the project shell that any
module may import. Tests and migrations are left out.

Three rules:
1. tasks_app imports no domain module;
2. a domain imports another domain's `services` only, never its internals;
3. no import cycle between modules (imports inside functions count: a lazy
   import hides a cycle, it does not remove it).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("claw", "tasks_app", "knowledge", "writing")
PLATFORM = "tasks_app"
SHELL = {
    "claw",
    "claw.settings",
    "claw.test_settings",
    "claw.celery",
    "claw.urls",
    "claw.wsgi",
    "claw.asgi",
}
DOMAINS = {"claw": "conversations", "knowledge": "knowledge", "writing": "writing"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).parts
            if "tests" in parts or "migrations" in parts or path.name == "conftest.py":
                continue
            modules[module_name(path, root)] = path
    return modules


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name an import statement anywhere in the tree may load:
    `from a import b` names a.b (when b is a module) and a."""
    names = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = project_modules(root)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        wanted = imported_names(tree, name, path.name == "__init__.py")
        graph[name] = {m for m in wanted if m in modules and m != name}
    return graph


def domain_of(module: str) -> str | None:
    if module in SHELL:
        return None
    top = module.partition(".")[0]
    return "platform" if top == PLATFORM else DOMAINS.get(top)


def crossings(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break rule 1 or 2, as "importer -> imported (why)"."""
    found = []
    for importer, imported in sorted(graph.items()):
        side = domain_of(importer)
        for target in sorted(imported):
            other = domain_of(target)
            if side is None or other in (None, "platform", side) or target in DOMAINS:
                continue  # the shell, the platform, its own, or a bare package
            if side == "platform":
                found.append(f"{importer} -> {target} (the platform imports a domain)")
            elif target.rpartition(".")[2] != "services":
                found.append(
                    f"{importer} -> {target} ({side} reaches into {other}'s "
                    "internals; only its services are public)"
                )
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# --- the rules ---------------------------------------------------------------


def test_the_platform_and_the_domains_import_only_what_they_may():
    assert crossings(import_graph()) == []


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


# --- the checker itself, on a small tree -----------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_each_kind_of_crossing_and_a_cycle(tmp_path):
    write_tree(
        tmp_path,
        {
            "claw/__init__.py": "",
            "claw/celery.py": "",
            "claw/notifications.py": "from claw import services\n",
            "claw/services.py": "def f():\n    from claw import notifications\n",
            "tasks_app/__init__.py": "",
            "tasks_app/alerts.py": "from claw.celery import app\n"
            "def f():\n    from claw.notifications import notify_staff\n",
            "knowledge/__init__.py": "",
            "knowledge/services.py": "from tasks_app import alerts\n",
            "knowledge/search.py": "",
            "writing/__init__.py": "",
            "writing/jobs.py": "from knowledge import services\n"
            "from knowledge.search import search_many\n",
            "writing/tests/test_x.py": "from knowledge import search\n",
        },
    )
    graph = import_graph(tmp_path)

    assert crossings(graph) == [
        "tasks_app.alerts -> claw.notifications (the platform imports a domain)",
        "writing.jobs -> knowledge.search (writing reaches into knowledge's "
        "internals; only its services are public)",
    ]
    assert cycles(graph) == [["claw.notifications", "claw.services"]]
