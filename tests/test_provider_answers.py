"""What comes back from a provider or gateway is checked before it counts: empty and odd answers,
cut-off answers, silence, reported and declared costs, and every dialect of "wait, then retry".

Every test talks HTTP to the local server through litellm, as production does. Waits between
attempts go through an injected sleep that records them, so a 60-second Retry-After is checked
for its real value without a test waiting a minute.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from support import FakeLLMServer, invoke, llm_server, make_plan, make_tenant, marker

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.errors import InvalidAnswerError
from dworkers.events import EventLog, StepRetrying
from dworkers.llm import (
    ERROR_EXCERPT_CHARS,
    MAX_ANSWER_BYTES,
    Completion,
    LiteLLMClient,
    LLMRequest,
    load_litellm,
)
from dworkers.results import RunResult, StepStatus
from dworkers.tenants.config import LimitsConfig, ModelPrice, TenantConfig

__all__ = ["llm_server"]


class Waits:
    """A sleep for the engine that records each wait and returns at once."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        await asyncio.sleep(0)


class NoGate:
    """A rate gate that never holds a call: the engine's own waits are what these tests check
    (the gate's pacing has its own tests)."""

    async def acquire(self, model: str, tokens: int) -> None:
        return None

    async def observe(self, model: str, status: int, headers: dict[str, str], tokens: int,
                      estimated: int) -> None:
        return None


def run_plan(
    server: FakeLLMServer,
    graph: dict[str, list[str]],
    *,
    tenant: TenantConfig | None = None,
    waits: Waits | None = None,
    log: EventLog | None = None,
    options: RunOptions | None = None,
    **step_options: object,
) -> RunResult:
    options = options or RunOptions()
    options.sleep = waits or Waits()
    engine = PlanBuilder(make_plan(graph, **step_options), tenant or make_tenant(),
                         api_base=server.url, options=options, on_event=log).build()
    engine.rate_gate = NoGate()
    return asyncio.run(engine.run({}))


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("DWORKERS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.yaml").write_text(
        "name: two\ndescription: Two steps\nsteps:\n"
        "  - {step_id: a, name: A, description: first}\n"
        "  - {step_id: b, name: B, description: second, depends_on: [a]}\n")
    return tmp_path


def tenant_file(directory: Path, body: str = "") -> str:
    path = directory / "gw.yaml"
    path.write_text("id: gw\nmodels:\n  default: openai/test-model\n" + body)
    return str(path)


def run_cli(server: FakeLLMServer, *args: str) -> tuple[int, str, str]:
    return invoke("run", "plan.yaml", "--api-base", server.url, "--out", "runs", *args)


def ask(server: FakeLLMServer, text: str, *, stream: bool, client: LiteLLMClient | None = None,
        pieces: list[str] | None = None) -> Completion:
    """One call through ``LiteLLMClient`` (``pieces`` collects what it passes on)."""
    request = LLMRequest("openai/test-model", [{"role": "user", "content": text}], 30,
                         api_base=server.url, stream=stream)
    sink = pieces if pieces is not None else []
    return asyncio.run((client or LiteLLMClient()).complete(request, sink.append))


# --- an answer is only a success if it is an answer -----------------------------------------

EMPTY_ANSWERS = {
    "empty body": {"raw_body": ""},
    "unparseable body": {"raw_body": "<html>502 Bad Gateway</html>"},
    "only [DONE]": {"answer": "done-only"},
    "empty text": {"content": ""},
    "only whitespace": {"content": "  \n "},
}


# Each fault asked for as a stream and as one whole answer (a stream of only [DONE] is a
# stream's fault alone).
EMPTY_CASES = [pytest.param(fault, stream, id=f"{name}-{'streamed' if stream else 'whole'}")
               for name, fault in EMPTY_ANSWERS.items() for stream in (True, False)
               if stream or fault.get("answer") != "done-only"]


@pytest.mark.parametrize(("fault", "stream"), EMPTY_CASES)
def test_an_empty_answer_is_a_failed_attempt_and_retried(
    llm_server: FakeLLMServer, fault: dict[str, Any], stream: bool
) -> None:
    llm_server.add_rule(marker("a"), times=1, **fault)
    llm_server.add_rule(marker("a"), content="the real deliverable")
    log = EventLog()
    result = run_plan(llm_server, {"a": []}, log=log, retry_max=1,
                      options=RunOptions(stream=stream))
    assert llm_server.requests[0].stream is stream

    step = result.outputs["a"]
    assert step.status is StepStatus.SUCCEEDED and step.attempts == 2
    assert step.output == "the real deliverable"
    [retry] = [e for e in log.events if isinstance(e, StepRetrying)]
    assert "answered 200" in retry.reason or "not valid JSON" in retry.reason


def test_an_empty_answer_is_never_cached(llm_server: FakeLLMServer, cli: Path) -> None:
    tenant = tenant_file(cli, "limits:\n  retry_max: 0\n")
    llm_server.add_rule(content="")
    code, _, stderr = run_cli(llm_server, "--tenant", tenant)
    assert code == 1 and "no text" in stderr
    calls = len(llm_server.requests)

    llm_server.clear_rules()
    code, stdout, stderr = run_cli(llm_server, "--tenant", tenant, "--json")
    assert code == 0, stderr
    assert len(llm_server.requests) == calls + 2  # both steps asked again, none from cache
    assert not any(step["cached"] for step in json.loads(stdout)["outputs"].values())


def test_a_plain_json_answer_to_a_stream_request_is_read(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(answer="json", content="text sent without streaming")
    result = run_plan(llm_server, {"a": []})

    step = result.outputs["a"]
    assert llm_server.requests[0].stream  # asked for a stream, got plain JSON
    assert step.succeeded and step.attempts == 1
    assert step.output == "text sent without streaming"
    assert step.completion_tokens == 4  # the body's own usage


def test_a_whole_answer_sent_as_a_stream_is_read(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(answer="stream", content="text streamed although not asked",
                        finish_reason="length", headers={"x-ratelimit-remaining-requests": "9"})
    log = EventLog()
    result = run_plan(llm_server, {"a": []}, log=log, options=RunOptions(stream=False))

    step = result.outputs["a"]
    assert not llm_server.requests[0].stream  # asked for a whole answer, got a stream
    assert step.succeeded and step.attempts == 1, step.error
    assert step.output == "text streamed although not asked"
    assert step.truncated  # the stream's own finish_reason, "length"
    answer = ask(llm_server, "again", stream=False)
    assert answer.headers["x-ratelimit-remaining-requests"] == "9"


def test_an_error_shows_a_short_excerpt_of_what_the_endpoint_said(
    llm_server: FakeLLMServer,
) -> None:
    said = "\x1b[2J\x1b]0;owned\x07\x1b[31mbad request " + "and a long body " * 300
    llm_server.add_rule(status=400, error_message=said)
    step = run_plan(llm_server, {"a": []}).outputs["a"]

    assert step.status is StepStatus.FAILED and step.error is not None
    prefix, _, words = step.error.partition(": ")
    assert prefix == "request refused (400)"
    assert words.startswith("bad request and a long body")  # escape codes gone
    assert len(words) <= ERROR_EXCERPT_CHARS and words.endswith("…")
    assert "\x1b" not in step.error and "\x07" not in step.error


# An answer of 200,000 bytes sent in 400 writes; the bound below is passed a tenth of the way in.
HUGE = "word " * 40_000
BOUND = 20_000


@pytest.mark.parametrize("shape", ["whole", "stream to a whole request", "stream"])
def test_an_answer_past_the_size_bound_is_refused_as_it_arrives(
    llm_server: FakeLLMServer, shape: str
) -> None:
    if shape == "whole":  # its length announced: refused before its body is read
        llm_server.add_rule(content=HUGE, body_delay=0.05, pieces=400)
    else:
        llm_server.add_rule(content=HUGE, chunk_delay=0.05, pieces=400,
                            answer="stream" if shape != "stream" else "normal")
    pieces: list[str] = []
    with pytest.raises(InvalidAnswerError) as caught:
        ask(llm_server, "hello", stream=shape == "stream",
            client=LiteLLMClient(max_answer_bytes=BOUND), pieces=pieces)

    assert str(caught.value).startswith("the answer is larger than 20,000 bytes")
    assert not caught.value.retryable  # the same prompt would be answered as long again
    assert sum(map(len, pieces)) <= BOUND
    llm_server.wait_idle(timeout=None)
    [request] = llm_server.requests
    assert request.abandoned  # dworkers hung up long before the endpoint finished sending


def test_the_size_bound_is_generous() -> None:
    # 128,000 tokens (the largest answers models write) are about 0.5 MB of text and, streamed
    # one token a chunk with ~200 bytes of wrapping each, about 25 MB.
    assert MAX_ANSWER_BYTES >= 32 * 1024 * 1024
    assert LiteLLMClient().max_answer_bytes == MAX_ANSWER_BYTES


@pytest.mark.slow
def test_sigterm_while_a_long_answer_arrives_ends_the_run(
    llm_server: FakeLLMServer, cli: Path
) -> None:
    # A whole answer that takes a minute to arrive: a run told to stop does not wait for it.
    llm_server.add_rule(content=HUGE, body_delay=0.5, pieces=120)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dworkers.cli", "run", "plan.yaml", "--api-base", llm_server.url,
         "--tenant", tenant_file(cli), "--out", "runs"],
        cwd=cli, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert llm_server.wait_for_body_sent(1, timeout=None)  # the answer is on its way
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (130, 143), stderr
    assert "interrupted" in stderr
    llm_server.wait_idle(timeout=None)
    [request] = llm_server.requests
    assert request.abandoned  # the process left before the answer was all there


def test_a_cut_off_answer_is_marked_truncated_everywhere(
    llm_server: FakeLLMServer, cli: Path
) -> None:
    llm_server.add_rule(marker("a"), content="half of a", finish_reason="length")
    code, stdout, stderr = run_cli(llm_server, "--tenant", tenant_file(cli), "--json")

    assert code == 0, stderr  # kept, as the tenant's default says
    data = json.loads(stdout)
    assert data["truncated"] == ["a"]
    assert data["outputs"]["a"]["truncated"] is True and data["outputs"]["b"]["truncated"] is False
    [run_dir] = (cli / "runs").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["outputs"]["a"]["truncated"] is True
    assert "> Truncated: the answer was cut off" in (run_dir / "report.md").read_text()
    assert "truncated" in stderr  # the summary says so
    code, stdout, _ = invoke("show", "last")  # and the history keeps it
    assert code == 0 and "truncated" in stdout


def test_a_streamed_cut_off_answer_is_marked_in_the_live_tree(llm_server: FakeLLMServer) -> None:
    from rich.console import Console

    from dworkers.view import LiveView

    llm_server.add_rule(marker("a"), content="half of a", finish_reason="length", pieces=3)
    console = Console(width=100, height=30, record=True, color_system=None,
                      file=io.StringIO())
    live = LiveView(console)  # fed events as a run on a terminal feeds it, painted once below
    options = RunOptions(stream=True)
    options.sleep = Waits()
    engine = PlanBuilder(make_plan({"a": [], "b": []}), make_tenant(), api_base=llm_server.url,
                         options=options, on_event=live).build()
    engine.rate_gate = NoGate()
    result = asyncio.run(engine.run({}))
    assert all(request.stream for request in llm_server.requests)
    assert result.outputs["a"].truncated and not result.outputs["b"].truncated

    console.print(live.render())
    tree = console.export_text()
    [a_line] = [line for line in tree.splitlines() if "✓ a " in line]
    [b_line] = [line for line in tree.splitlines() if "✓ b " in line]
    assert a_line.endswith("  truncated") and "truncated" not in b_line
    assert "cut off at the model's token limit" in tree


def test_a_tenant_can_make_a_cut_off_answer_a_failure(
    llm_server: FakeLLMServer, cli: Path
) -> None:
    llm_server.add_rule(marker("a"), content="half of a", finish_reason="length")
    tenant = tenant_file(cli, "limits:\n  on_truncation: fail\n")
    code, stdout, _ = run_cli(llm_server, "--tenant", tenant, "--json")

    assert code == 1
    step = json.loads(stdout)["outputs"]["a"]
    assert step["status"] == "failed" and "token limit" in step["error"]
    assert step["attempts"] == 1  # the same prompt would be cut off again: not retried
    assert len(llm_server.requests) == 1  # b never ran


@pytest.mark.parametrize(("plan_says", "tenant_says", "fails"), [
    ("fail", "", True), ("keep", "limits:\n  on_truncation: fail\n", False),
    ("", "limits:\n  on_truncation: fail\n", True), ("", "", False)])
def test_a_plan_can_make_a_cut_off_answer_a_failure_or_keep_it(
    llm_server: FakeLLMServer, cli: Path, plan_says: str, tenant_says: str, fails: bool
) -> None:
    llm_server.add_rule(content="half of it", finish_reason="length")
    plan = (cli / "plan.yaml").read_text()
    if plan_says:
        (cli / "plan.yaml").write_text(f"on_truncation: {plan_says}\n" + plan)
    code, stdout, stderr = run_cli(llm_server, "--tenant", tenant_file(cli, tenant_says),
                                   "--json")
    assert code == (1 if fails else 0), stderr
    assert json.loads(stdout)["outputs"]["a"]["status"] == ("failed" if fails else "succeeded")


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_timeout_seconds_bounds_the_whole_answer_streamed_or_not(
    llm_server: FakeLLMServer, stream: bool,
) -> None:
    # A 2 s answer, against a 0.9 s limit: streamed, 8 pieces a steady 0.25 s apart (never
    # 0.9 s of silence); whole, in one piece after 2 s. A terminal and cron see one meaning.
    if stream:
        llm_server.add_rule(content="one two three four five six seven eight", pieces=8,
                            chunk_delay=0.25)
    else:
        llm_server.add_rule(content="one two three four five six seven eight", latency=2)
    result = run_plan(llm_server, {"a": []}, tenant=make_tenant(timeout=0.9),
                      options=RunOptions(stream=stream))

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED
    if stream:
        assert step.error == "timed out: the answer took longer than 0.9s (timeout_seconds)"
        assert step.completion_tokens > 0  # the pieces received are counted
    else:
        assert step.error == "timed out: no answer within 0.9s"
    assert step.estimated
    [request] = llm_server.requests
    assert request.stream is stream


def test_silence_times_out_and_what_was_sent_is_counted_as_an_estimate(
    llm_server: FakeLLMServer,
) -> None:
    llm_server.add_rule(hang=True)
    tenant = make_tenant(timeout=0.3)
    tenant.prices = {"openai/test-model": ModelPrice(input_per_million=1e6,
                                                     output_per_million=1e6)}
    result = run_plan(llm_server, {"a": []}, tenant=tenant)

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED
    assert step.error == "timed out: no answer within 0.3s"
    # The provider may bill the prompt it was sent: counted, priced, and said to be estimated.
    assert step.prompt_tokens > 0 and step.completion_tokens == 0 and step.estimated
    assert step.cost_usd == pytest.approx(step.prompt_tokens)  # $1 a token
    assert result.summary()["estimated"] is True


def test_waiting_at_the_rate_gate_is_not_silence(llm_server: FakeLLMServer) -> None:
    class SlowGate(NoGate):
        async def acquire(self, model: str, tokens: int) -> None:
            await asyncio.sleep(3.0)  # held back by the model's rate limit

    load_litellm()  # as a run does before it starts: importing it is not the endpoint's silence
    plan = make_plan({"a": []})
    engine = PlanBuilder(plan, make_tenant(timeout=2.0), api_base=llm_server.url).build()
    engine.rate_gate = SlowGate()
    step = asyncio.run(engine.run({})).outputs["a"]
    assert step.succeeded and step.attempts == 1, step.error


def test_an_answer_that_breaks_off_counts_what_was_received(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(content="one two three four five six seven eight", pieces=8,
                        drop_after=3)
    result = run_plan(llm_server, {"a": []}, options=RunOptions(stream=True))

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED
    assert step.error is not None and step.error.startswith("connection failed (http://")
    # "one two three " arrived before the connection dropped: counted, as an estimate.
    assert step.completion_tokens == 4 and step.prompt_tokens > 0 and step.estimated
    assert not step.cost_known  # the test model has no price


def test_answers_and_errors_carry_their_response_headers(llm_server: FakeLLMServer) -> None:
    from dworkers.errors import RateLimitError

    llm_server.add_rule("limited", status=429, headers={"llm_provider-retry-after": "7",
                                                        "X-RateLimit-Remaining-Requests": "0"})
    llm_server.add_rule(headers={"x-ratelimit-remaining-requests": "41",
                                 "x-ratelimit-reset-tokens": "6m0s"})
    for stream in (True, False):
        answer = ask(llm_server, "hello", stream=stream)
        assert answer.headers["x-ratelimit-remaining-requests"] == "41"
        assert answer.headers["x-ratelimit-reset-tokens"] == "6m0s"
        with pytest.raises(RateLimitError) as caught:
            ask(llm_server, "limited", stream=stream)
        assert caught.value.headers["retry-after"] == "7"
        assert caught.value.headers["x-ratelimit-remaining-requests"] == "0"
        assert caught.value.retry_after == 7 and caught.value.status == 429


def test_legitimately_repetitive_output_is_not_an_error(llm_server: FakeLLMServer) -> None:
    table = "| --- " * 150  # the same 6-character chunk 150 times in a row
    llm_server.add_rule(content=table, pieces=150)
    result = run_plan(llm_server, {"a": []})

    step = result.outputs["a"]
    assert step.succeeded, step.error
    assert step.output == table


# --- litellm details dworkers reads ----------------------------------------------------------
# Each is private to litellm and could vanish in any release: these fail loudly, naming it, where
# the behaviour built on it would otherwise degrade quietly (headers lost, answers unread).


def test_litellm_still_has_the_private_details_dworkers_reads(llm_server: FakeLLMServer) -> None:
    litellm = load_litellm()
    options: dict[str, Any] = {"model": "openai/test-model", "api_base": llm_server.url,
                               "messages": [{"role": "user", "content": "hi"}],
                               "num_retries": 0, "max_retries": 0}

    async def answers() -> tuple[Any, Any, Any]:
        whole = await litellm.acompletion(stream=False, **options)
        stream = await litellm.acompletion(stream=True, **options)
        response = getattr(getattr(stream, "completion_stream", None), "response", None)
        async for _ in stream:
            pass
        return whole, stream, response

    whole, stream, response = asyncio.run(answers())
    for answer in (whole, stream):
        hidden = getattr(answer, "_hidden_params", None)
        assert isinstance(hidden, dict), "litellm answers lost _hidden_params (headers)"
        assert "llm_provider-x-request-id" in hidden.get("additional_headers", {}), (
            "_hidden_params['additional_headers'] no longer holds the response headers")
    assert callable(getattr(response, "aread", None)) and hasattr(
        response, "is_stream_consumed"), (
        "a litellm stream's completion_stream.response (its HTTP response) is gone: plain "
        "JSON sent to a stream request can no longer be read")
    import litellm.litellm_core_utils.streaming_handler as streaming

    assert "litellm.REPEATED_STREAMING_CHUNK_LIMIT" in Path(streaming.__file__).read_text(), (
        "litellm reads its repeated-chunk limit elsewhere now: load_litellm must set it there")


def test_answers_from_openai_compatible_endpoints_pass_the_size_hook(
    llm_server: FakeLLMServer,
) -> None:
    ask(llm_server, "hello", stream=False)
    session = load_litellm().aclient_session
    from litellm.llms.openai.common_utils import BaseOpenAILLM

    assert callable(BaseOpenAILLM._get_async_http_client), "litellm renamed its client builder"
    assert session is not None and any(
        hook.__name__ == "_watch_answer" for hook in session.event_hooks["response"]), (
        "litellm's OpenAI client no longer goes through dworkers' answer hook")


# --- costs ------------------------------------------------------------------------------------


def test_the_cost_the_endpoint_reports_is_used(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(marker("a"), usage_cost=0.25)
    llm_server.add_rule(marker("b"), headers={"x-litellm-response-cost": "0.125"})
    llm_server.add_rule(marker("c"), headers={"llm_provider-x-litellm-response-cost": "0.5"})
    result = run_plan(llm_server, {"a": [], "b": [], "c": []})

    costs = {sid: (r.cost_usd, r.cost_known) for sid, r in result.outputs.items()}
    assert costs == {"a": (0.25, True), "b": (0.125, True), "c": (0.5, True)}


def test_a_tenant_declares_prices_for_models_litellm_does_not_know(
    llm_server: FakeLLMServer,
) -> None:
    tenant = make_tenant()
    tenant.prices = {"openai/test-*": ModelPrice(input_per_million=2, output_per_million=4)}
    step = run_plan(llm_server, {"a": []}, tenant=tenant).outputs["a"]

    assert step.cost_known
    assert step.cost_usd == pytest.approx((step.prompt_tokens * 2 + step.completion_tokens * 4)
                                          / 1e6)


def test_an_unknown_cost_is_shown_as_unknown_never_as_zero(
    llm_server: FakeLLMServer, cli: Path
) -> None:
    code, stdout, stderr = run_cli(llm_server, "--tenant", tenant_file(cli), "--json")

    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["cost_known"] is False
    assert all(step["cost_known"] is False for step in data["outputs"].values())
    assert "cost unknown" in stderr and "$0.0000" not in stderr
    # ... and so does the history, later.
    code, stdout, _ = invoke("runs")
    assert code == 0 and "cost unknown" in stdout and "$0.0000" not in stdout
    code, stdout, _ = invoke("show", "last")
    assert code == 0 and "cost unknown" in stdout and "$0.0000" not in stdout


def test_a_budget_with_a_model_nobody_prices_stops_after_one_call(
    llm_server: FakeLLMServer, cli: Path
) -> None:
    # Neither litellm nor the tenant nor the endpoint knows the price: one call shows it.
    code, stdout, stderr = run_cli(llm_server, "--tenant", tenant_file(cli), "--max-cost",
                                   "0.0001", "--json")

    assert code == 1
    assert "'openai/test-model' has no known price" in stderr
    data = json.loads(stdout)
    assert data["outputs"]["a"]["status"] == "succeeded"
    error = data["outputs"]["b"]["error"]
    assert "prices:" in error and "--max-cost" in error  # both ways out
    assert len(llm_server.requests) == 1


def test_a_budget_with_declared_prices_stops_at_the_budget(
    llm_server: FakeLLMServer, cli: Path
) -> None:
    # Every call costs $1 by the gateway's word; the budget allows one.
    llm_server.add_rule(usage_cost=1.0)
    tenant = tenant_file(cli, "prices:\n  openai/test-model: {input_per_million: 1, "
                              "output_per_million: 1}\n")
    code, stdout, _ = run_cli(llm_server, "--tenant", tenant, "--max-cost", "0.5", "--json")

    assert code == 1
    data = json.loads(stdout)
    assert data["outputs"]["a"]["status"] == "succeeded"
    assert data["outputs"]["b"]["status"] == "skipped"
    assert "budget" in data["outputs"]["b"]["error"]
    assert len(llm_server.requests) == 1


def test_no_retry_once_the_budget_is_spent(llm_server: FakeLLMServer) -> None:
    # The attempt times out, but the provider may bill the prompt it was sent: at $1 a prompt
    # token that spends two thirds of the budget, so the step is not tried again.
    llm_server.add_rule(hang=True)
    tenant = make_tenant(timeout=0.3)
    tenant.prices = {"*": ModelPrice(input_per_million=1e6, output_per_million=0)}
    plan = make_plan({"a": []}, retry_max=3)
    probe = PlanBuilder(plan, tenant, mock=True).build()
    prompt = sum(len(m["content"]) for m in probe.messages_for(plan.get_step("a"), {}, {}))
    budget = 1.5 * -(-prompt // 4)  # one call's prompt (4 characters a token), and a half
    tenant.limits.max_cost_usd = budget
    result = run_plan(llm_server, {"a": []}, tenant=tenant, retry_max=3)

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED and step.attempts == 1
    assert f"not retried: budget of ${budget:g} would be passed" in (step.error or "")
    assert len(llm_server.requests) == 1


# --- rate limits and retries ------------------------------------------------------------------


GATEWAY_429S = {
    "litellm proxy": ({"llm_provider-retry-after": "60"}, 60.0),
    "milliseconds": ({"retry-after-ms": "1500"}, 1.5),
    "forwarded milliseconds": ({"llm_provider-retry-after-ms": "250"}, 0.25),
    "reset of the exhausted limit": ({"x-ratelimit-remaining-requests": "0",
                                      "x-ratelimit-reset-requests": "6m0s",
                                      "x-ratelimit-remaining-tokens": "100",
                                      "x-ratelimit-reset-tokens": "120ms"}, 360.0),
}


@pytest.mark.parametrize(("headers", "wait"), GATEWAY_429S.values(), ids=GATEWAY_429S.keys())
def test_a_429_is_waited_out_as_the_endpoint_asks(
    llm_server: FakeLLMServer, headers: dict[str, str], wait: float
) -> None:
    llm_server.add_rule(status=429, headers=headers, times=1)
    waits = Waits()
    result = run_plan(llm_server, {"a": []}, waits=waits)  # retry_max 0: 429s are not failures

    assert result.outputs["a"].succeeded and result.outputs["a"].attempts == 2
    assert waits.seconds == [pytest.approx(wait)]


def test_retry_after_as_an_http_date(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(status=429, times=1,
                        headers={"Retry-After": formatdate(time.time() + 120, usegmt=True)})
    waits = Waits()
    assert run_plan(llm_server, {"a": []}, waits=waits).success
    [wait] = waits.seconds
    assert 110 < wait <= 120


def test_a_huge_retry_after_fails_at_once_and_says_why(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(status=429, headers={"Retry-After": "99999"}, times=1)
    waits, log = Waits(), EventLog()
    result = run_plan(llm_server, {"a": []}, waits=waits, log=log)

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED and step.attempts == 1
    assert waits.seconds == []  # not 10 minutes sat out for nothing
    assert step.error is not None and step.error.endswith(
        "— asked to wait 27h 46m 39s, more than the 10m limits.rate_limit_wait_seconds "
        "leaves this step")


def test_429_waiting_is_bounded_by_time_per_step(llm_server: FakeLLMServer) -> None:
    llm_server.add_rule(status=429, headers={"llm_provider-retry-after": "60"})
    waits = Waits()
    tenant = make_tenant(rate_limit_wait_seconds=150)
    result = run_plan(llm_server, {"a": []}, tenant=tenant, waits=waits, retry_max=5)

    step = result.outputs["a"]
    assert waits.seconds == [60, 60]  # the third minute would pass 150 s
    assert step.status is StepStatus.FAILED and step.attempts == 3
    assert "asked to wait 1m, more than the 30s" in (step.error or "")


def test_steps_without_their_own_retry_max_use_the_tenants(llm_server: FakeLLMServer) -> None:
    assert LimitsConfig().retry_max == 2
    llm_server.add_rule(status=500, times=2)
    waits = Waits()
    result = run_plan(llm_server, {"a": []}, tenant=make_tenant(retry_max=2), waits=waits)
    assert result.outputs["a"].succeeded and result.outputs["a"].attempts == 3

    llm_server.add_rule(status=500, times=1)
    result = run_plan(llm_server, {"a": []}, tenant=make_tenant(retry_max=2), retry_max=0)
    assert result.outputs["a"].status is StepStatus.FAILED  # the step's own 0 wins
    assert result.outputs["a"].attempts == 1


# --- client-side mistakes are caught before any call ------------------------------------------


def test_credentials_in_the_api_base_are_a_usage_error_before_any_call(
    llm_server: FakeLLMServer, cli: Path
) -> None:
    secret = "hunter2-not-a-real-password"
    url = llm_server.url.replace("http://", f"http://user:{secret}@")
    code, _, stderr = invoke("run", "plan.yaml", "--api-base", url, "--out", "runs")

    assert code == 2
    assert "holds credentials" in stderr and secret not in stderr
    assert llm_server.requests == []
    assert not (cli / "runs").exists()
    history = cli / "home" / "history.db"
    assert not history.exists() or secret.encode() not in history.read_bytes()


def test_a_secret_in_the_api_base_query_is_never_stored(
    llm_server: FakeLLMServer, cli: Path
) -> None:
    secret = "sk-query-secret-0123456789abcdef"
    code, _, _ = invoke("run", "plan.yaml", "--api-base", f"{llm_server.url}?api-key={secret}",
                        "--out", "runs")
    assert code == 1  # the endpoint has no such path; the run is recorded all the same
    stored = [p for p in (cli / "home").rglob("*") if p.is_file()]
    stored += [p for p in (cli / "runs").rglob("*") if p.is_file()]
    assert stored and all(secret.encode() not in p.read_bytes() for p in stored)


def test_a_model_without_a_provider_is_caught_in_preflight(
    llm_server: FakeLLMServer, cli: Path
) -> None:
    code, _, stderr = run_cli(llm_server, "--model", "gpt-mini")

    assert code == 2
    assert "'gpt-mini' names no provider" in stderr and "openai/gpt-mini" in stderr
    assert "LLM Provider NOT provided" not in stderr
    assert llm_server.requests == []


def test_a_failed_run_ends_with_the_command_that_finishes_it(
    llm_server: FakeLLMServer, cli: Path
) -> None:
    llm_server.add_rule(marker("b"), status=400)
    code, stdout, stderr = run_cli(llm_server, "--tenant", tenant_file(cli), "--json")

    assert code == 1
    run_id = json.loads(stdout)["run_id"]
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.strip().endswith(f"dworkers run --resume {run_id}")
