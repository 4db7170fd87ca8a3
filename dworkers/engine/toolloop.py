"""The tool loop of one attempt: the model asks for tool calls, dworkers runs them and answers.

A step with ``tools`` (its own, or its role's in the tenant) sends the tools' schemas with its
call. While the model answers with tool calls, they run — those asked in one turn at the same
time — and their results go back to the model, until it answers with text or the step has
made its ``max_tool_calls`` (else the tenant's ``limits.max_tool_calls``) calls, which fails
it. The run's MCP servers belong to its pool
(``Pool.toolbox``): started on first use, shared by its steps and rows, and stopped when the
run ends (``tools_closed``), however it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from dworkers.engine.pool import Pool
from dworkers.engine.settings import Policy
from dworkers.errors import LLMError, Usage
from dworkers.llm import Completion, DeltaCallback, LLMClient, LLMRequest, ToolRequest
from dworkers.plans.base import PlanStep
from dworkers.results import ToolCall
from dworkers.tools import Tool, Toolbox, ToolOutcome, ToolServerError

Item = TypeVar("Item")


class ToolLoopError(LLMError):
    """The tool loop failed the step: too many calls, or its servers cannot be reached."""

    retryable = False


def step_tools(policy: Policy, step: PlanStep) -> list[str]:
    """The tools ``step`` may call: its own ``tools``, else its role's in the tenant."""
    return policy.tenant.tools_for(step.worker_role, step.tools)


def cacheable(policy: Policy, step: PlanStep) -> bool:
    """Whether ``step``'s answer may come from (and go to) the prompt cache: a step without
    tools, or whose tools' servers are all marked ``pure``."""
    entries = step_tools(policy, step)
    return not entries or all(
        (server := policy.tenant.mcp_servers.get(e.split(".", 1)[0])) is not None
        and server.pure for e in entries)


def toolbox_of(pool: Pool, policy: Policy) -> Toolbox:
    if pool.toolbox is None:
        pool.toolbox = Toolbox(policy.tenant.mcp_servers)
    return pool.toolbox


async def close_tools(pool: Pool) -> None:
    """Stop the servers the run started (nothing when it used none)."""
    if pool.toolbox is not None:
        await pool.toolbox.aclose()


async def tools_closed(items: AsyncIterator[Item], pool: Pool) -> AsyncIterator[Item]:
    """``items`` (a dataset run's rows), the run's tool servers stopped once they end."""
    try:
        async for item in items:
            yield item
    finally:
        await close_tools(pool)


@dataclasses.dataclass
class _Totals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0

    def add(self, completion: Completion) -> None:
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        if self.cost_usd is not None and completion.cost_usd is not None:
            self.cost_usd += completion.cost_usd
        else:
            self.cost_usd = None

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cost_usd, False)


async def converse(policy: Policy, pool: Pool, step: PlanStep, request: LLMRequest,
                   on_delta: DeltaCallback, calling: Callable[[str], None],
                   log: list[ToolCall]) -> Completion:
    """The model's answer to ``request``, tool calls run and answered on the way (each one
    added to ``log``; ``calling`` hears "calling server.tool (2/10)")."""
    client: LLMClient = policy.client
    entries = step_tools(policy, step)
    if not entries or policy.offline:  # --mock calls no model, and so no tool either
        return await client.complete(request, on_delta)
    box = toolbox_of(pool, policy)
    try:
        tools = {tool.function_name: tool for tool in await box.tools_for(entries)}
    except ToolServerError as exc:
        raise ToolLoopError(f"tools: {exc}") from None
    limit = policy.tool_calls_for(step)
    where = ("the step's max_tool_calls" if step.max_tool_calls
             else "limits.max_tool_calls in the tenant")
    request = dataclasses.replace(request, tools=tuple(t.schema() for t in tools.values()))
    turns: list[dict[str, Any]] = []
    totals = _Totals()
    while True:  # bounded: every turn but the last makes at least one of ``limit`` calls
        completion = await client.complete(dataclasses.replace(request, turns=tuple(turns)),
                                           on_delta)
        totals.add(completion)
        asked = completion.tool_calls
        if not asked:
            return dataclasses.replace(
                completion, prompt_tokens=totals.prompt_tokens,
                completion_tokens=totals.completion_tokens, cost_usd=totals.cost_usd)
        if len(log) + len(asked) > limit:
            raise ToolLoopError(
                f"the model asked for more than {limit} tool calls (it had made {len(log)}, "
                f"then asked for {len(asked)} more) — raise {where}, or ask for fewer "
                "lookups in the step's prompt", usage=totals.usage())
        turns.append({"role": "assistant", "content": completion.text or None, "tool_calls": [
            {"id": call.call_id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}} for call in asked]})
        outcomes = await asyncio.gather(*(
            _one_call(box, tools.get(call.name), call, f"({len(log) + n}/{limit})", calling)
            for n, call in enumerate(asked, start=1)))
        for call, outcome in zip(asked, outcomes, strict=True):
            if outcome.record is not None:
                log.append(outcome.record)
            turns.append({"role": "tool", "tool_call_id": call.call_id, "content": outcome.text})


@dataclasses.dataclass
class _Answer:
    text: str
    record: ToolCall | None


async def _one_call(box: Toolbox, tool: Tool | None, call: ToolRequest, count: str,
                    calling: Callable[[str], None]) -> _Answer | ToolOutcome:
    if tool is None:  # a name the model made up: it is told, and it counts
        return _Answer(f"error: there is no tool named {call.name[:80]!r}",
                       ToolCall(server="", tool=call.name[:80], arguments=call.arguments[:1000],
                                error="no such tool"))
    calling(f"calling {tool.qualified} {count}")
    return await box.call(tool, call.arguments)
