"""The module map: each module says its one job, and imports only point down the layers."""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dworkers"
PYPROJECT = PACKAGE.parent / "pyproject.toml"

# Top to bottom; a module may import its own package and anything in a lower layer.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"run", "show", "exports", "completion", "schema"},  # what the command line calls
    {"view", "engine", "executors", "history", "outputs", "report_files", "dataset", "targets"},
    {"llm", "loader", "prompts", "catalog", "ratelimit", "endpoints",
     "deliverables", "documents", "tracing", "tools"},
    {"plans", "tenants"},
    {"discovery"},
    # Pure, no I/O beyond files.py: these may import one another.
    {"templates", "dag", "errors", "events", "types", "names", "files", "redact", "text",
     "provider_headers", "budget", "estimates", "conditions", "output_schema", "results",
     "approvals", "job_queue"},
]
# Deliberate upward imports, each with its reason.
EXCEPTIONS = {
    # The seed API's documented path; nothing inside dworkers imports it.
    ("plans.builder", "engine"),
    # Files are read on first use (lazily): the loader builds what the registries hold.
    ("discovery", "loader"),
    ("plans.registry", "loader"),
    ("tenants.registry", "loader"),
}
# Packages only these may import.
ONLY = {"yaml": "loader", "litellm": "llm", "rich": "view", "ray": "executors",
        "pypdf": "documents", "docx": "documents", "openpyxl": "documents",
        "pptx": "documents", "reportlab": "documents", "markdown_it": "documents",
        "opentelemetry": "tracing", "mcp": "tools"}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts) or "dworkers", path))
    return found


def _layer(name: str) -> int | None:
    top = name.split(".")[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    return None


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "dworkers":  # from dworkers import dag, loader
                names += [f"dworkers.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_each_module_opens_by_saying_its_job(module: str, path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring and docstring.strip(), f"{module} has no docstring"


def test_every_module_has_a_layer() -> None:
    assert [m for m, _ in _modules() if m != "dworkers" and _layer(m) is None] == []


def test_imports_only_point_down_the_layers() -> None:
    upward = []
    for module, path in _modules():
        own = _layer(module)
        if own is None:
            continue
        for name in _imports(path):
            if not name.startswith("dworkers.") or name == "dworkers.__version__":
                continue
            target = name.removeprefix("dworkers.")
            if target.split(".")[0] == module.split(".")[0]:
                continue  # inside its own package
            layer = _layer(target)
            allowed = any(module == m and target.split(".")[0] == t for m, t in EXCEPTIONS)
            pure = own == len(LAYERS) - 1
            if layer is not None and layer <= own and not allowed and not pure:
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_heavy_and_format_libraries_have_one_importer_each() -> None:
    wrong = []
    for module, path in _modules():
        for name in _imports(path):
            owner = ONLY.get(name.split(".")[0])
            if owner is not None and module.split(".")[0] != owner:
                wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_the_seed_api_path_to_the_builder_is_the_engines_builder() -> None:
    from dworkers.engine import PlanBuilder
    from dworkers.plans.builder import PlanBuilder as SeedPlanBuilder

    assert SeedPlanBuilder is PlanBuilder


# --- import circles ------------------------------------------------------------------------------


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``: never run, so they make no circle."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden |= {id(inner) for part in node.body for inner in ast.walk(part)}
    return hidden


def _dworkers_imports(module: str, path: Path, known: Collection[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its file, function bodies
    included (an import deferred into a function still closes a circle when the function runs)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def resolve(name: str) -> str | None:
        name = name.removeprefix("dworkers").lstrip(".")
        while name and name not in known:
            name = name.rpartition(".")[0]
        return (name or "dworkers") if (name or "dworkers") in known else None

    tree = ast.parse(path.read_text(encoding="utf-8"))
    hidden = _type_checking_only(tree)
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.split(".")[0] == "dworkers"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from ..y import z
                parts = package.split(".") if package != "dworkers" else []
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(["dworkers", *parts, *([node.module] if node.module else [])])
            elif node.module and node.module.split(".")[0] == "dworkers":
                base = node.module
            else:
                continue
            # "from dworkers.engine import rows" imports the module engine.rows when there is
            # one, else a name from engine itself.
            names += [f"{base}.{alias.name}" for alias in node.names]
    found = {resolve(name) for name in names}
    return {target for target in found if target is not None and target != module}


def _circles() -> list[list[str]]:
    """Every group of modules that import one another, directly or round a longer circle
    (the strongly connected components of the import graph, Tarjan's algorithm)."""
    known = {module for module, _ in _modules()}
    graph = {module: _dworkers_imports(module, path, known) for module, path in _modules()}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return sorted(circles)


def test_no_modules_import_one_another_even_inside_a_package() -> None:
    circles = _circles()
    assert not circles, "import circles: " + "; ".join(" ↔ ".join(c) for c in circles)


def test_the_circle_finder_sees_an_import_hidden_in_a_function(tmp_path: Path) -> None:
    # The finder itself, on the shape it exists to catch: a circle hidden by a local import.
    (tmp_path / "a.py").write_text('"""A."""\nfrom dworkers.engine import b\n')
    (tmp_path / "b.py").write_text('"""B."""\ndef f():\n    from dworkers.engine.a import x\n')
    (tmp_path / "c.py").write_text('"""C."""\nfrom typing import TYPE_CHECKING\n'
                                   'if TYPE_CHECKING:\n    from dworkers.engine import a\n')
    known = {"engine", "engine.a", "engine.b", "engine.c"}
    assert _dworkers_imports("engine.a", tmp_path / "a.py", known) == {"engine.b"}
    assert _dworkers_imports("engine.b", tmp_path / "b.py", known) == {"engine.a"}
    assert _dworkers_imports("engine.c", tmp_path / "c.py", known) == set()


# --- one name, one thing -------------------------------------------------------------------------


def test_no_two_top_level_functions_or_classes_share_a_name() -> None:
    defined: dict[str, list[str]] = defaultdict(list)
    for module, path in _modules():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            named = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            hook = named and node.name.startswith("__") and node.name.endswith("__")  # __getattr__
            if named and not hook:
                defined[node.name].append(module)
    shared = [f"{name} ({', '.join(modules)})" for name, modules in sorted(defined.items())
              if len(modules) > 1]
    assert not shared, "names defined more than once: " + "; ".join(shared)


# --- dependencies --------------------------------------------------------------------------------


def test_litellm_is_bounded_and_never_a_compromised_release() -> None:
    from importlib.metadata import version

    from packaging.requirements import Requirement

    dependencies = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"][
        "dependencies"]
    [litellm] = [Requirement(d) for d in dependencies if Requirement(d).name == "litellm"]
    for compromised in ("1.82.7", "1.82.8"):
        assert compromised not in litellm.specifier
    assert "1.0" not in litellm.specifier and "2.0" not in litellm.specifier  # bounded
    assert version("litellm") in litellm.specifier  # and the one installed is allowed
