"""Shared helpers for tests that run plans against the local OpenAI-compatible server."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from fake_llm_server import FakeLLMServer, RequestRecord
from typer.testing import CliRunner

from dworkers.cli import app
from dworkers.plans.base import BasePlan, PlanStep
from dworkers.tenants.config import LimitsConfig, ModelsConfig, TenantConfig, WorkerConfig
from dworkers.types import WorkerRole

TEST_MODEL = "openai/test-model"


def invoke(*args: str) -> tuple[int, str, str]:
    """Run the command line in-process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, list(args))
    # A user mistake never ends in a traceback: only typer's own exit is allowed through.
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def llm_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    """A fresh local server per test, with a dummy key so litellm's preflight passes."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with FakeLLMServer() as server:
        yield server


def make_plan(
    graph: Mapping[str, Sequence[str]],
    *,
    name: str = "test-plan",
    roles: Mapping[str, WorkerRole] | None = None,
    **step_options: Any,
) -> BasePlan:
    """A plan from ``{step_id: [dependencies]}``; each step is named ``step_id.upper()``."""
    # Long enough that the server's default reply (which echoes 60 characters) never contains
    # another step's marker.
    plan = BasePlan(name, description="A plan built by a test to check how dworkers behaves")
    for step_id, deps in graph.items():
        plan.add_step(
            PlanStep(
                step_id=step_id,
                name=step_id.upper(),
                description=f"Do {step_id}",
                worker_role=(roles or {}).get(step_id, WorkerRole.ANALYST),
                depends_on=list(deps),
                **step_options,
            )
        )
    return plan


def make_tenant(
    *,
    model: str = TEST_MODEL,
    max_concurrency: int = 8,
    timeout: float = 10.0,
    max_cost_usd: float | None = None,
    role_limits: Mapping[WorkerRole, int] | None = None,
    allowed: Sequence[str] = ("*",),
    retry_max: int = 0,
    **limits: Any,
) -> TenantConfig:
    """A tenant for tests. Steps retry only when they say so (``retry_max`` 0, not the
    tenant default 2), so that a test counts the attempts it asked for."""
    return TenantConfig(
        id="test-tenant",
        name="Test Tenant",
        context="Test Tenant makes test widgets.",
        models=ModelsConfig(default=model),
        workers={r: WorkerConfig(max_concurrent_tasks=n) for r, n in (role_limits or {}).items()},
        limits=LimitsConfig(
            max_concurrency=max_concurrency, timeout_seconds=timeout, max_cost_usd=max_cost_usd,
            retry_max=retry_max, **limits,
        ),
        security={"allowed_models": list(allowed)},  # type: ignore[arg-type]
    )


def growth(job_of_size: Callable[[int], Callable[[], object]], n: int, tries: int = 5) -> float:
    """time(4n) / time(n), the best of ``tries`` each: about 4 when the work is linear in its
    size, about 16 when quadratic, whatever the machine's speed or load. Quick jobs are
    repeated until a measurement takes a few milliseconds, so timer noise does not decide; the
    two sizes are timed in turn, so a busy spell slows both alike; and the garbage collector
    waits, since a collection landing in one measurement would skew the comparison."""
    import gc
    import time

    def timed(job: Callable[[], object], repeat: int) -> float:
        start = time.perf_counter()
        for _ in range(repeat):
            job()
        return time.perf_counter() - start

    small, large = job_of_size(n), job_of_size(4 * n)
    repeat = 1
    while timed(small, repeat) < 0.005 and repeat < 10_000:
        repeat *= 4
    best_small = best_large = float("inf")
    gc.disable()
    try:
        for _ in range(tries):
            best_small = min(best_small, timed(small, repeat))
            best_large = min(best_large, timed(large, repeat))
    finally:
        gc.enable()
    return best_large / max(best_small, 1e-9)


LINEAR = 10.0
"""A growth ratio under this is linear: linear work grows about 4 times (up to 7 seen on a busy
machine, with caches), quadratic 16."""


def marker(step_id: str) -> str:
    """Text that appears only in the request of ``step_id`` itself (the header starts a line;
    the server's default reply echoes text on one line, so it never matches)."""
    return f"\n# Your step: {step_id.upper()} ({step_id})"


def request_for(server: FakeLLMServer, step_id: str) -> list[RequestRecord]:
    return server.requests_containing(marker(step_id))
