"""Secrets never reach what a run shows or saves; provider errors are mapped and worded well.

Unit tests of ``dworkers.redact``, then the engine against the local server through litellm.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import litellm
import pytest
from support import LINEAR, FakeLLMServer, growth, llm_server, make_plan, make_tenant

from dworkers.engine import PlanBuilder, RunOptions
from dworkers.errors import (
    AuthenticationError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from dworkers.events import EventLog, StepRetrying
from dworkers.llm import LiteLLMClient, _clean_message
from dworkers.redact import redact, redact_url
from dworkers.results import RunResult, StepStatus
from dworkers.tenants.config import TenantConfig, check_api_base, check_model_name

__all__ = ["llm_server"]

KEY = "sk-test-not-a-real-key-123456"


# --- redact ---------------------------------------------------------------------------------


def test_values_of_secret_looking_environment_variables_are_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACME_OPENAI_API_KEY", "plain-value-0001")
    monkeypatch.setenv("GITHUB_TOKEN", "plain-value-0002")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "plain-value-0003")
    monkeypatch.setenv("DB_PASSWORD_FILE", "plain-value-0004")
    monkeypatch.setenv("SHORT_KEY", "1234567")  # under 8 characters: left alone
    monkeypatch.setenv("EDITOR_THEME", "plain-value-0005")  # not a secret-looking name
    text = ("got plain-value-0001, plain-value-0002, plain-value-0003, plain-value-0004, "
            "plain-value-0005 and 1234567")
    assert redact(text) == ("got [redacted], [redacted], [redacted], [redacted], "
                            "plain-value-0005 and 1234567")


def test_given_secrets_are_redacted_whatever_they_look_like() -> None:
    assert redact("token was hunter2hunter2!", ["hunter2hunter2"]) == "token was [redacted]!"
    # the longer of two overlapping secrets goes first, so nothing of it is left behind
    assert redact("abcd-efgh-ijkl", ["abcd", "abcd-efgh-ijkl"]) == "[redacted]"
    assert redact("a b c", ["", None, "a"]) == "a b c"  # empty or tiny values are ignored


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Incorrect API key provided: sk-abcdefgh12345678.",
         "Incorrect API key provided: sk-…[redacted]."),
        ("key sk-ant-api03-AbCdEf012345_xyz-987 rejected", "key sk-ant-…[redacted] rejected"),
        ("proj sk-proj-Zz9Yy8Xx7Ww6", "proj sk-proj-…[redacted]"),
        ("Authorization: Bearer eyJ0eXAi.abc123.def456", "Authorization: Bearer [redacted]"),
        ("sent bearer 0123456789abcdef", "sent bearer [redacted]"),
        ("api_key=abc123def456&model=x", "api_key=[redacted]&model=x"),
        ('{"api_key": "q1w2e3r4t5y6"}', '{"api_key": "[redacted]"}'),
        ("OPENAI_API_KEY: zz11yy22xx33", "OPENAI_API_KEY: [redacted]"),
        ("password=swordfish", "password=[redacted]"),
        ("x-api-key: 9f8e7d6c5b4a", "x-api-key: [redacted]"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123", "ghp_…[redacted]"),
        ("see postgres://bob:pa55word@db:5432/app", "see postgres://[redacted]@db:5432/app"),
    ],
)
def test_key_shaped_strings_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The model openai/gpt-4o-mini at https://api.openai.com/v1 refused (400): bad request.",
        "See https://docs.litellm.ai/docs/providers for the list of providers.",
        "missing key: OPENAI_API_KEY; api_key_env: ACME_KEY; token: none",
        "the bearer of bad news; scikit-learn and task-force-planning; risk-assessments",
        "Key: revenue grew 12% in Q3 (see table 4).",
        "git@github.com:org/repo.git and user@example.com",
        "Authorization: permission denied for this model",
        "Invalid password: must contain a digit; client_secret: missing from request",
        "",
    ],
)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_redact_url_removes_credentials() -> None:
    assert redact_url("https://user:pa55@proxy.example:8443/v1") == "https://proxy.example:8443/v1"
    assert redact_url("http://token123@localhost:4000") == "http://localhost:4000"
    assert redact_url("https://h/v1?api_key=zz11yy22xx33&x=1") == "https://h/v1?api_key=[redacted]&x=1"
    assert redact_url("http://localhost:4000/v1") == "http://localhost:4000/v1"


@pytest.mark.parametrize(
    "unit", ["a", "sk-", "key=", "key", "x_", "https://", "Bearer ", "a-b.", "é ", "eyJ"]
)
def test_redact_is_linear_on_long_text(unit: str) -> None:
    # A quadratic pattern would take minutes on 400,000 characters; linear takes ~0.03 s.
    def redacting(chars: int) -> Callable[[], object]:
        text = unit * (chars // len(unit))
        return lambda: redact(text)

    assert growth(redacting, 400_000) < LINEAR


# --- provider messages and errors ------------------------------------------------------------


def test_clean_message_strips_only_leading_labels() -> None:
    exc = Exception("litellm.AuthenticationError: AuthenticationError: OpenAIException - "
                    "Bad key. See https://docs.litellm.ai/docs/exception_mapping")
    assert _clean_message(exc) == "Bad key. See https://docs.litellm.ai/docs/exception_mapping"
    assert _clean_message(Exception("litellm.APIError: APIError: x")) == "x"
    assert _clean_message(Exception("Upstream said: InternalServerError: InternalServerError: "
                                    "boom")) == "Upstream said: InternalServerError: boom"


def test_litellm_exception_classes_map_to_ours() -> None:
    client = LiteLLMClient()
    ex = litellm.exceptions
    timeout = client._translate(ex.Timeout("slow", model="m", llm_provider="openai"))
    assert isinstance(timeout, ProviderTimeoutError)
    assert str(timeout) == "timed out: slow"
    connection = client._translate(
        ex.APIConnectionError("Connection error.", llm_provider="openai", model="m"))
    assert isinstance(connection, ProviderUnavailableError) and connection.retryable
    assert str(connection) == "connection failed: Connection error."  # no endpoint known
    limited = client._translate(
        ex.RateLimitError("slow down", llm_provider="openai", model="m"))
    assert isinstance(limited, RateLimitError)
    denied = client._translate(ex.AuthenticationError(
        f"Incorrect API key provided: {KEY}", llm_provider="openai", model="m"), (KEY,))
    assert isinstance(denied, AuthenticationError)
    assert KEY not in str(denied) and "Incorrect API key provided" in str(denied)


# --- end to end, through litellm --------------------------------------------------------------


def run(plan_graph: dict[str, list[str]], api_base: str, tenant: TenantConfig | None = None,
        log: EventLog | None = None, **step_options: object) -> RunResult:
    engine = PlanBuilder(make_plan(plan_graph, **step_options), tenant or make_tenant(),
                         api_base=api_base, options=RunOptions(retry_base_delay=0.01),
                         on_event=log).build()
    return asyncio.run(engine.run())


def assert_nowhere(secret: str, result: RunResult, log: EventLog) -> None:
    assert secret not in result.model_dump_json()
    assert all(secret not in repr(event) for event in log.events)


@pytest.mark.parametrize("status", [401, 500])
def test_a_key_echoed_by_the_provider_is_redacted_from_results_and_events(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    llm_server.add_rule(status=status,
                        error_message=f"Incorrect API key provided: {KEY}. You can find your "
                        "API key at https://platform.openai.com/account/api-keys.")
    log = EventLog()
    result = run({"a": []}, llm_server.url, log=log, retry_max=1)

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {KEY}"  # the key was used
    error = step.error or ""
    assert KEY not in error
    assert f"({status}): Incorrect API key provided: " in error
    assert "https://platform.openai.com/account/api-keys" in error
    assert_nowhere(KEY, result, log)


def test_the_requests_own_key_is_redacted_even_when_it_looks_like_nothing(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "plainvalue9876zz"
    monkeypatch.setenv("ACME_LLM_CREDENTIAL", secret)  # a name redact() would not guess
    llm_server.add_rule(status=401, error_message=f"Incorrect API key provided: {secret}")
    tenant = make_tenant().model_copy(update={"api_key_env": "ACME_LLM_CREDENTIAL"})
    log = EventLog()
    result = run({"a": []}, llm_server.url, tenant=tenant, log=log)

    assert llm_server.requests[0].headers["authorization"] == f"Bearer {secret}"
    assert "Incorrect API key provided: [redacted]" in (result.outputs["a"].error or "")
    assert_nowhere(secret, result, log)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_refused_connection_is_reported_as_such_and_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    log = EventLog()
    port = closed_port()
    result = run({"a": []}, f"http://127.0.0.1:{port}/v1?api-key={KEY}", log=log, retry_max=2)

    step = result.outputs["a"]
    assert step.status is StepStatus.FAILED and step.attempts == 3
    # The endpoint is named (scheme, host and port only: never a path or credentials).
    assert (step.error or "").startswith(f"connection failed (http://127.0.0.1:{port}): ")
    # Not mistaken for a server error (the port itself may well contain "500").
    detail = (step.error or "").removeprefix(f"connection failed (http://127.0.0.1:{port}): ")
    assert "500" not in detail and "InternalServerError" not in detail
    assert KEY not in (step.error or "") and "/v1" not in (step.error or "")
    retries = [e for e in log.events if isinstance(e, StepRetrying)]
    assert [e.attempt for e in retries] == [1, 2]
    assert all(e.reason.startswith("connection failed (http://") for e in retries)


def test_a_dropped_connection_is_a_connection_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    log = EventLog()
    with FakeLLMServer(max_hang=0.2) as server:  # closes a hung request without an answer
        server.add_rule(hang=True, times=1)
        result = run({"a": []}, server.url, log=log, retry_max=1)
    step = result.outputs["a"]
    assert step.status is StepStatus.SUCCEEDED and step.attempts == 2
    [retry] = [e for e in log.events if isinstance(e, StepRetrying)]
    assert retry.reason == f"connection failed (http://127.0.0.1:{server.port}): Connection error."


# --- tenant configuration ---------------------------------------------------------------------


def test_api_key_env_applies_to_the_provider_of_the_default_model() -> None:
    tenant = TenantConfig.model_validate({
        "id": "acme", "api_key_env": "ACME_OPENAI_KEY",
        "models": {"default": "openai/gpt-4o-mini",
                   "researcher": "anthropic/claude-3-5-sonnet-latest"},
    })
    assert tenant.api_key_env_for("openai/gpt-4o-mini") == "ACME_OPENAI_KEY"
    assert tenant.api_key_env_for("openai/gpt-4o") == "ACME_OPENAI_KEY"
    assert tenant.api_key_env_for("gpt-4o") == "ACME_OPENAI_KEY"  # no provider: openai
    assert tenant.api_key_env_for("anthropic/claude-3-5-sonnet-latest") is None
    assert tenant.api_key_env_for("azure/gpt-4o") is None

    other = TenantConfig.model_validate({
        "id": "acme", "api_key_env": "ACME_CLAUDE_KEY",
        "models": {"default": "anthropic/claude-3-5-sonnet-latest"},
    })
    assert other.api_key_env_for("anthropic/claude-3-haiku") == "ACME_CLAUDE_KEY"
    assert other.api_key_env_for("openai/gpt-4o") is None
    assert TenantConfig(id="acme").api_key_env_for("openai/gpt-4o") is None


def test_model_names_and_api_bases_can_be_checked_on_their_own() -> None:
    assert check_model_name("openai/gpt-4o-mini") is None
    assert check_model_name("bedrock/anthropic.claude-3:0") is None
    assert check_model_name("openai/ gpt") == "malformed model name 'openai/ gpt'"
    assert check_api_base("http://localhost:4000/v1") is None
    assert check_api_base("ftp://x") == "api_base 'ftp://x' is not an http(s) URL"
    error = check_api_base("htp://bob:hunter2hunter2@host/v1") or ""
    assert "is not an http(s) URL" in error and "hunter2hunter2" not in error
