"""Checks before any call: the run's inputs, its models, keys, options and budget.

Every problem is reported at once, located (``--input``, ``tenant``, ``environment``, an
option), so a user fixes them all in one go and no call is paid for a run that cannot finish.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from dworkers.engine.settings import Policy
from dworkers.errors import InputError, PreflightError, Problem, did_you_mean, suggestion
from dworkers.plans.base import BasePlan
from dworkers.tenants.config import check_api_base, check_model_name
from dworkers.text import crop, one_line


def inputs_with_defaults(plan: BasePlan, inputs: Mapping[str, object] | None) -> dict[str, str]:
    """Inputs with defaults applied; every missing or unknown name reported at once."""
    given = {str(k): str(v) for k, v in (inputs or {}).items()}
    required = plan.required_inputs()
    optional = plan.optional_inputs()
    known = [*required, *optional]
    problems = []
    missing = [name for name in required if name not in given]
    if missing:
        flags = " ".join(f'--input {name}="..."' for name in missing)
        described = []  # what each input is for, when the plan says
        for name in missing:
            spec = (plan.inputs or {}).get(name)
            about = crop(one_line(spec.description), 80) if spec is not None else ""
            described.append(f"{name} ({about})" if about else name)
        problems.append(Problem(f"missing input{'s' if len(missing) > 1 else ''}: "
                                f"{', '.join(described)}", f"pass {flags}", "missing-input",
                                file="--input"))
    # A plan that declares no inputs takes any: steps without a template are given them all
    # (the seed's ``engine.run(inputs={"brief": ...})``). Only a name that looks like a typo
    # of a missing one is reported there.
    declared = plan.inputs is not None
    for name in given:
        if name not in known and (declared or did_you_mean(name, missing)):
            guess = did_you_mean(name, known)
            hint = (suggestion(name, guess) if guess
                    else f"this plan takes: {', '.join(known) or 'no inputs'}")
            problems.append(Problem(f"unknown input {name!r}", hint, "unknown-input",
                                    file="--input"))
    if problems:
        raise InputError(problems)
    return {**optional, **given}


def check_before_calls(policy: Policy) -> None:
    """Fail before any call if a model is not allowed, its key is not set, an option is
    malformed or the budget is not a number of dollars.

    A model whose price is not known up front is not refused here: with a budget its first
    call goes alone and the endpoint's reported cost prices the rest (``dworkers.budget``).
    """
    tenant, options = policy.tenant, policy.options
    # Every step, reused or not: a reused result applies only if the step would be asked the
    # same thing, and a changed model or input makes it call after all.
    models: dict[str, list[str]] = {}
    for step in policy.plan.steps:
        models.setdefault(policy.model_for(step), []).append(step.step_id)
    problems = []
    budget = policy.max_cost_usd
    if budget is not None and not (math.isfinite(budget) and budget >= 0):
        problems.append(Problem(f"budget {budget!r} is not a number of dollars",
                                "pass --max-cost 2.50, or leave it out for no budget",
                                "invalid-budget", file="--max-cost"))
    allowed = ", ".join(tenant.security.allowed_models)
    for model, steps in models.items():
        if not tenant.allows(model):
            problems.append(Problem(
                f"model {model!r} is not allowed for tenant {tenant.id!r} "
                f"(allowed: {allowed}; used by: {', '.join(steps)})",
                "choose an allowed model with --model, or extend security.allowed_models",
                "model-not-allowed", file="tenant"))
    keyed = {model for model in models if tenant.api_key_env_for(model)}
    key_env = tenant.api_key_env
    if keyed and key_env and not os.environ.get(key_env):
        problems.append(Problem(
            f"tenant {tenant.id!r} reads its key from {key_env}, which is not set "
            f"(used by: {', '.join(sorted(keyed))})", f"export {key_env}=...",
            "missing-api-key", file="environment"))
    for name, value, check in (("--model", options.model, check_model_name),
                               ("--api-base", options.api_base, check_api_base)):
        error = check(value) if value else None
        if error:
            problems.append(Problem(error, f"fix {name} (or its environment variable)",
                                    "invalid-option", file=name))
    problems += policy.client.preflight(models, keyed)
    if problems:
        raise PreflightError(problems)
