"""What a command names: a plan by name or YAML path; validating any plan or tenant target."""

from __future__ import annotations

from pathlib import Path

from dworkers.errors import DworkersError, Problem, ProblemsError
from dworkers.plans.base import BasePlan


def looks_like_path(target: str) -> bool:
    if target.endswith((".yaml", ".yml")) or "/" in target or "\\" in target:
        return True
    try:
        return Path(target).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte, ...
        return False


def resolve_plan(target: str) -> BasePlan:
    """A plan from a YAML path or a registered name; raises ``DworkersError``."""
    from dworkers import loader
    from dworkers.plans.registry import plan_registry

    if looks_like_path(target):
        return loader.load_plan(target)
    return plan_registry.get(target)


def validate_target(target: str) -> tuple[list[Problem], str]:
    """Every problem with a plan/tenant file or registered plan, and a one-line summary."""
    from dworkers import loader
    from dworkers.plans.registry import plan_registry
    from dworkers.tenants.config import TenantConfig

    try:
        if looks_like_path(target):
            item = loader.load_any(target)
        else:
            entry = plan_registry.entry(target)
            if entry.path is not None:
                item = loader.load_plan(entry.path)
            else:
                entry.item.validate()
                item = entry.item
    except ProblemsError as exc:
        return exc.problems, ""
    except DworkersError as exc:
        return [Problem(str(exc), code="not-found", file=target)], ""
    if isinstance(item, TenantConfig):
        return [], f"{target}: tenant {item.id!r} is valid"
    steps = len(item.steps)
    return [], f"{target}: plan {item.name!r} is valid ({steps} step{'' if steps == 1 else 's'})"


__all__ = ["looks_like_path", "resolve_plan", "validate_target"]
