"""How a typed step asks for JSON, and what comes back, when a gateway stands between dworkers and
the model: the tenant's ``structured_output`` decides the path where litellm cannot know the
model behind a gateway's own name; answers wrapped in fences or prose are taken without a
re-ask. Through litellm and the suite's own server, which records how JSON was asked for."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support import FakeLLMServer, invoke, llm_server, make_tenant, marker, request_for
from test_typed_steps import triage_plan

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.results import RunResult

__all__ = ["llm_server"]

FITTING = {"severity": "high", "in_scope": True, "areas": ["payments"]}


def run(server: FakeLLMServer, model: str, structured: dict[str, str] | None = None,
        ) -> RunResult:
    tenant = make_tenant(model=model)
    tenant.structured_output = dict(structured or {})  # type: ignore[arg-type]
    engine = PlanBuilder(triage_plan(), tenant, api_base=server.url,
                         options=RunOptions(retry_base_delay=0.01)).build()
    return asyncio.run(engine.run({"brief": "Acme buys a bakery"}))


@pytest.mark.parametrize(("model", "structured", "path", "response_format"), [
    # A gateway's alias litellm cannot know: JSON mode, unless the tenant vouches for it.
    ("openai/team-default", None, "json_mode", "json_object"),
    ("openai/team-default", {"openai/team-*": "native"}, "native", "json_schema"),
    # A name litellm knows, fronting a server that takes no JSON Schema: the tenant says so.
    ("openai/gpt-4o", None, "native", "json_schema"),
    ("openai/gpt-4o", {"openai/gpt-4o": "json_mode"}, "json_mode", "json_object"),
    # A server that takes no response_format at all: the schema in the prompt only.
    ("openai/local-llama", {"openai/*": "instructions"}, "instructions", None),
])
def test_the_tenant_decides_how_a_model_behind_a_gateway_is_asked_for_json(
    llm_server: FakeLLMServer, model: str, structured: dict[str, str] | None, path: str,
    response_format: str | None,
) -> None:
    result = run(llm_server, model, structured)

    assert result.success and result.outputs["triage"].value is not None
    [request] = request_for(llm_server, "triage")
    assert request.structured == path
    assert (request.body.get("response_format") or {}).get("type") == response_format
    assert "matches this JSON Schema" in request.text  # in the prompt on every path


@pytest.mark.parametrize(("model", "structured", "hint"), [
    ("openai/gpt-4o", None, "— if the endpoint does not take a JSON Schema response_format, "
     "set structured_output: {'openai/gpt-4o': json_mode} in the tenant"),
    ("openai/team-default", None, "— if the endpoint does not take response_format json_object, "
     "set structured_output: {'openai/team-default': instructions} in the tenant"),
    ("openai/team-default", {"openai/*": "instructions"}, None),  # nothing plainer to ask
])
def test_a_refused_response_format_names_the_plainer_way_to_ask(
    llm_server: FakeLLMServer, model: str, structured: dict[str, str] | None, hint: str | None,
) -> None:
    refusal = "response_format is not supported by this server"
    llm_server.add_rule(marker("triage"), status=400, error_message=refusal)

    error = run(llm_server, model, structured).outputs["triage"].error or ""

    assert refusal in error
    if hint is None:
        assert "structured_output" not in error
    else:
        assert error.endswith(hint)


@pytest.mark.parametrize("answer", [
    "```json\n" + json.dumps(FITTING, indent=2) + "\n```",
    json.dumps(FITTING) + "\n\nLet me know if you need anything else.",
    "Sure! " + json.dumps(FITTING) + " Hope this helps.",
])
def test_json_wrapped_in_a_fence_or_prose_is_taken_without_a_re_ask(
    llm_server: FakeLLMServer, answer: str,
) -> None:
    llm_server.add_rule(marker("triage"), content=answer)

    result = run(llm_server, "openai/team-default")

    triage = result.outputs["triage"]
    assert result.success and triage.value == FITTING and triage.attempts == 1
    assert len(request_for(llm_server, "triage")) == 1


def test_validate_locates_a_wrong_structured_output_setting(tmp_path: Path) -> None:
    tenant = tmp_path / "gateway.yaml"
    tenant.write_text("id: gateway\nstructured_output:\n  openai/gpt-4o: jsonmode\n"
                      "  '': native\n")

    code, _, stderr = invoke("validate", str(tenant))

    assert code == 2
    assert (f"{tenant}:3:18: structured_output.openai/gpt-4o: Input should be 'native', "
            "'json_mode' or 'instructions'") in stderr
    assert f"{tenant}:4:7: empty model pattern in structured_output" in stderr
