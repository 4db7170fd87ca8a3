"""What a command names: a plan by name or YAML path; validating any plan or tenant target."""

from __future__ import annotations

from pathlib import Path

from dworkers.errors import DworkersError, Problem, ProblemsError
from dworkers.plans.base import BasePlan
from dworkers.tenants.config import TenantConfig


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


def resolve_tenant(name: str) -> TenantConfig:
    """A tenant from a YAML path or a registered name; raises ``DworkersError``."""
    from dworkers import loader
    from dworkers.tenants.registry import tenant_registry

    if looks_like_path(name):
        return loader.load_tenant(name)
    return tenant_registry.get(name)


def validate_target(target: str,
                    tenant: TenantConfig | None = None) -> tuple[list[Problem], str]:
    """Every problem with a plan/tenant file or registered plan, and a one-line summary; a
    plan is also checked against ``tenant`` when one is given (the tools its steps use)."""
    from dworkers import loader
    from dworkers.plans.registry import plan_registry

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
    if tenant is not None and (problems := tool_problems(item, tenant)):
        return problems, ""
    steps = len(item.steps)
    return [], f"{target}: plan {item.name!r} is valid ({steps} step{'' if steps == 1 else 's'})"


def tool_problems(plan: BasePlan, tenant: TenantConfig) -> list[Problem]:
    """Each step's ``tools`` entry naming an MCP server ``tenant`` does not declare, located
    in the plan file (a role's default is checked with the tenant itself)."""
    found = []
    source = plan.source
    for i, step in enumerate(plan.steps):
        for j, entry in enumerate(step.tools):
            error = tenant.unknown_tool_server(entry)
            if error is None:
                continue
            line, column = source.at(("steps", i, "tools", j)) if source else (None, None)
            found.append(Problem(f"step {step.step_id!r}: {error}", tenant.tool_hint(),
                                 "unknown-tool-server",
                                 source.file if source else f"<plan {plan.name}>", line, column))
    return found


__all__ = ["looks_like_path", "resolve_plan", "resolve_tenant", "tool_problems",
           "validate_target"]
