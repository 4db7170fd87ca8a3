"""Earlier answers given again without a call: a resumed run's results, and the cache.

A resumed step's earlier answer applies while the step would be asked exactly the same thing
(the messages' digest), whatever model or endpoint answered it; a cached answer applies to the
same model at the same endpoint asked the same thing (``cache_key``). Either is marked as
reused and costs nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from dworkers import dag, output_schema
from dworkers.engine.settings import Policy
from dworkers.llm import Message
from dworkers.plans.base import PlanStep
from dworkers.results import MOCK_MODEL, StepResult, digest_messages


class StepCache(Protocol):
    """Earlier successful results by cache key (see ``cache_key``)."""

    def lookup(self, key: str) -> StepResult | None: ...


def cache_key(model: str, messages: list[Message], api_base: str | None = None) -> str:
    """What identifies an answer: the same model at the same endpoint asked the same thing."""
    payload = json.dumps({"model": model, "messages": messages, "api_base": api_base},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def as_reused(result: StepResult, **update: Any) -> StepResult:
    """An earlier answer given again without a call (resumed or cached): nothing is spent, and
    the result says so."""
    return result.model_copy(update={
        "cached": True, "cost_usd": 0.0, "cost_known": True, "estimated": False,
        "prompt_tokens": 0, "completion_tokens": 0, "attempts": 0, "duration_ms": 0.0,
        **update})


def applies_again(policy: Policy, step: PlanStep, reused: StepResult,
                  inputs: Mapping[str, str], outputs: Mapping[str, Any],
                  skipped: Mapping[str, str] | None = None) -> bool:
    """Whether an earlier run's result answers ``step`` now: it succeeded and the step would
    be asked exactly the same thing (other inputs or upstream outputs run it again), whatever
    model or endpoint answered it. Made-up ``--mock`` answers only do offline."""
    if not reused.succeeded or (reused.model == MOCK_MODEL and not policy.offline):
        return False
    asked = policy.messages_for(step, inputs, outputs, skipped)
    if reused.messages_digest is None:  # an answer from before digests: the same call
        model = policy.model_for(step)
        return reused.cache_key == cache_key(model, asked, policy.endpoint_for(model))
    return reused.messages_digest == digest_messages(asked)


def reusable_steps(policy: Policy, reuse: Mapping[str, StepResult],
                 inputs: Mapping[str, str]) -> dict[str, bool]:
    """For each step, in plan order: whether a run would take it from ``reuse`` (True) or call
    for it. A step below one that is called counts as called (its answer could only be reused
    if the new upstream answer came out the same)."""
    graph = policy.plan.graph
    outputs: dict[str, Any] = {}
    for sid in dag.topological_order(graph):
        step = policy.plan.get_step(sid)
        earlier = typed_again(step, reuse.get(sid)) if step is not None else None
        if (step is not None and earlier is not None
                and all(dep in outputs for dep in graph[sid])
                and applies_again(policy, step, earlier, inputs, outputs)):
            outputs[sid] = earlier.answer
    return {sid: sid in outputs for sid in graph}


def typed_again(step: PlanStep, earlier: StepResult | None) -> StepResult | None:
    """An earlier answer (resumed or cached) as a typed step needs it: with its value parsed
    and checked against the step's schema now, or ``None`` when it does not fit (it is then
    asked again). Untyped steps take it as it is."""
    schema = step.answer_schema()
    if earlier is None or schema is None or not earlier.succeeded:
        return earlier
    value, errors = output_schema.validate_answer(earlier.output, schema)
    return None if errors else earlier.model_copy(update={"value": value})
