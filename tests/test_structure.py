"""The module map: each module says its one job, and imports only point down the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dworkers"

# Top to bottom; a module may import its own package and anything in a lower layer.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"run", "show", "completion", "schema"},  # what the command line calls
    {"view", "engine", "executors", "history", "outputs", "dataset", "targets"},
    {"llm", "loader", "prompts", "catalog", "ratelimit", "endpoints",
     "deliverables"},
    {"plans", "tenants"},
    {"discovery"},
    # Pure, no I/O beyond files.py: these may import one another.
    {"templates", "dag", "errors", "events", "types", "names", "files", "redact", "text",
     "provider_headers"},
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
ONLY = {"yaml": "loader", "litellm": "llm", "rich": "view", "ray": "executors"}


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
