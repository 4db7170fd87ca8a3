"""Tests for the fake OpenAI-compatible server used by the test-suite and benchmarks."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import json
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import litellm
import pytest
from litellm.exceptions import InternalServerError, RateLimitError, Timeout

# Importable whether or not tests/ is a package (pytest's default "prepend" import mode
# only puts tests/ itself on sys.path when there is no tests/__init__.py).
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer, split_pieces

SERVER_SCRIPT = Path(__file__).with_name("fake_llm_server.py")
TIMEOUT = httpx.Timeout(10.0)

# litellm 1.110 lazily imports litellm.llms.github_copilot.* during a completion call; pydantic
# then warns (UserWarning, once per process) about its TypedDicts' `ReadOnly` items.
IGNORE_LITELLM_READONLY_WARNING = pytest.mark.filterwarnings(
    r"ignore:Items? .* on TypedDict class '\w+' (are|is) using the `ReadOnly` qualifier"
    ":UserWarning"
)
# litellm 1.110's streaming handler inspects every attribute of each Delta (dir + getattr) when it
# processes the usage chunk, which trips pydantic 2.11's instance-access deprecation.  Under
# "-W error" litellm re-raises it as MidStreamFallbackError, so it must be ignored here.
IGNORE_LITELLM_MODEL_FIELDS_DEPRECATION = pytest.mark.filterwarnings(
    r"ignore:Accessing the 'model_(computed_)?fields' attribute on the instance is deprecated"
    ":pydantic.warnings.PydanticDeprecatedSince211"
)


def chat_body(text: str, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": text},
        ],
        "stream": stream,
        **extra,
    }


def post(srv: FakeLLMServer, text: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/chat/completions", json=chat_body(text, **kwargs), timeout=TIMEOUT
    )


def sse_events(srv: FakeLLMServer, body: dict[str, Any]) -> tuple[httpx.Response, list[str]]:
    """POST a streaming request and return the response and its ``data:`` payloads."""
    with httpx.stream(
        "POST", f"{srv.url}/chat/completions", json=body, timeout=TIMEOUT
    ) as response:
        lines = list(response.iter_lines())
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert all(line == "" or line.startswith("data: ") for line in lines)
    return response, events


def test_json_response_with_usage_and_record() -> None:
    with FakeLLMServer() as srv:
        assert srv.url.startswith("http://127.0.0.1:") and srv.url.endswith("/v1")
        response = post(srv, "hello brave new world")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert int(response.headers["content-length"]) == len(response.content)
        data = response.json()
        assert data["object"] == "chat.completion"
        assert data["model"] == "test-model"
        choice = data["choices"][0]
        assert choice["message"] == {
            "role": "assistant",
            "content": "Reply to: hello brave new world",
        }
        assert choice["finish_reason"] == "stop"
        # prompt: "You are terse." (3 words) + "hello brave new world" (4 words)
        assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}

        (record,) = srv.requests
        assert record.index == 0
        assert record.model == "test-model"
        assert record.messages[1] == {"role": "user", "content": "hello brave new world"}
        assert record.stream is False
        assert record.status == 200
        assert not record.abandoned
        assert record.finished is not None and record.finished >= record.started
        assert record.headers["content-type"] == "application/json"
        assert record.body == chat_body("hello brave new world")
        assert srv.in_flight == 0
        assert srv.max_in_flight == 1


def test_a_whole_answer_can_be_sent_as_a_stream() -> None:
    with FakeLLMServer() as srv:
        srv.add_rule(answer="stream", content="streamed all the same", finish_reason="length")
        response, events = sse_events(srv, chat_body("hi", stream=False))
        assert response.headers["content-type"] == "text/event-stream"
        chunks = [json.loads(e) for e in events if e and e != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == "streamed all the same" and events[-1] == "[DONE]"
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert srv.requests[0].stream is False


def test_a_whole_answer_can_be_sent_slowly_and_its_progress_waited_for() -> None:
    with FakeLLMServer() as srv:
        srv.add_rule(content="slow " * 50, body_delay=0.01, pieces=5)
        response = post(srv, "hi")
        assert response.json()["choices"][0]["message"]["content"] == "slow " * 50
        assert srv.wait_for_body_sent(len(response.content), timeout=None)
        [record] = srv.requests
        assert record.body_sent == len(response.content) and not record.abandoned


def test_path_without_v1_models_and_unknown_path() -> None:
    with FakeLLMServer() as srv:
        response = httpx.post(
            f"{srv.base_url}/chat/completions", json=chat_body("hi"), timeout=TIMEOUT
        )
        assert response.status_code == 200
        models = httpx.get(f"{srv.url}/models", timeout=TIMEOUT)
        assert models.status_code == 200 and models.json()["object"] == "list"
        missing = httpx.post(f"{srv.url}/embeddings", json={}, timeout=TIMEOUT)
        assert missing.status_code == 404 and "error" in missing.json()
        bad = httpx.post(f"{srv.url}/chat/completions", content=b"not json", timeout=TIMEOUT)
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        assert [r.status for r in srv.requests] == [200, 400]


def test_default_reply_is_single_line_and_truncated() -> None:
    text = "line one\nline   two " + "x" * 100
    with FakeLLMServer() as srv:
        reply = post(srv, text).json()["choices"][0]["message"]["content"]
    assert reply == "Reply to: " + ("line one line two " + "x" * 100)[:60]


def test_split_pieces_rejoins() -> None:
    for text in ["", "a", "hi there", "one two three four", "w " * 40, " lead and trail  "]:
        pieces = split_pieces(text)
        assert "".join(pieces) == text
        assert 1 <= len(pieces) <= 8
    assert 4 <= len(split_pieces("the quick brown fox jumps over the lazy dog")) <= 8


def test_streaming_pieces_and_usage() -> None:
    reply = "The quick brown fox jumps over the lazy dog twice today"
    with FakeLLMServer() as srv:
        srv.add_rule("fox", content=reply)
        body = chat_body(
            "tell me about the fox", stream=True, stream_options={"include_usage": True}
        )
        response, events = sse_events(srv, body)
        assert response.headers["content-type"] == "text/event-stream"
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        usage_chunk = chunks[-1]
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"] == {
            "prompt_tokens": 8,
            "completion_tokens": 11,
            "total_tokens": 19,
        }
        final = chunks[-2]["choices"][0]
        assert final["finish_reason"] == "stop" and final["delta"] == {}
        pieces = [
            c["choices"][0]["delta"]["content"]
            for c in chunks[:-2]
            if c["choices"][0]["delta"].get("content")
        ]
        assert 4 <= len(pieces) <= 8
        assert "".join(pieces) == reply
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)

        # Without include_usage there is no usage chunk.
        _, events = sse_events(srv, chat_body("fox again", stream=True))
        chunks = [json.loads(event) for event in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert all("usage" not in c for c in chunks)

        records = srv.requests
        assert [r.stream for r in records] == [True, True]
        assert all(r.status == 200 and r.reply == reply for r in records)


def test_chunk_delay_spreads_stream() -> None:
    with FakeLLMServer() as srv:
        srv.add_rule(content="one two three four", chunk_delay=0.05)
        _, events = sse_events(srv, chat_body("x", stream=True))
        assert events[-1] == "[DONE]"
        (record,) = srv.requests
        assert record.duration is not None
        # 4 pieces + the final chunk, each preceded by a delay.
        assert record.duration >= 0.25


def test_rules_match_in_order_and_times() -> None:
    with FakeLLMServer() as srv:
        once = srv.add_rule("alpha", content="first alpha", times=1)
        srv.add_rule("alpha", content="later alpha")
        srv.add_rule("terse", content="matched the system message")

        def reply(text: str) -> str:
            return str(post(srv, text).json()["choices"][0]["message"]["content"])

        assert reply("alpha one") == "first alpha"
        assert reply("alpha two") == "later alpha"
        assert reply("alpha three") == "later alpha"
        assert reply("beta") == "matched the system message"
        assert once.times == 0 and once.matched == 1

        srv.clear_rules()
        assert reply("alpha four") == "Reply to: alpha four"
        assert [r.index for r in srv.requests_containing("alpha")] == [0, 1, 2, 4]
        assert srv.wait_for_requests(5, timeout=1.0)
        assert not srv.wait_for_requests(6, timeout=0.05)


def test_429_with_retry_after() -> None:
    with FakeLLMServer() as srv:
        srv.add_rule("limited", status=429, retry_after=1.5, times=1)
        response = post(srv, "limited request")
        assert response.status_code == 429
        assert response.headers["retry-after"] == "2"  # integer seconds, rounded up
        assert response.headers["retry-after-ms"] == "1500"
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "rate_limit_exceeded"
        assert error["message"]
        # times=1: the retry succeeds.
        assert post(srv, "limited request").status_code == 200
        assert [r.status for r in srv.requests] == [429, 200]


def test_500_error() -> None:
    with FakeLLMServer() as srv:
        srv.add_rule("boom", status=500, error_message="kaboom")
        response = post(srv, "boom")
        assert response.status_code == 500
        assert "retry-after" not in response.headers
        assert response.json()["error"]["message"] == "kaboom"
        assert response.json()["error"]["type"] == "server_error"
        assert srv.requests[0].status == 500


def test_hang_released_promptly_by_stop() -> None:
    srv = FakeLLMServer(max_hang=600.0).start()
    outcome: dict[str, Any] = {}

    def client() -> None:
        try:
            outcome["response"] = post(srv, "please hang")
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    try:
        srv.add_rule("hang", hang=True)
        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        assert srv.wait_for_in_flight(1, timeout=60.0)
        time.sleep(0.1)
        assert thread.is_alive()
    finally:
        srv.stop()
    # The hang lasts up to max_hang (600 s here): coming back within the join's bound at all
    # means stop() released it.
    thread.join(timeout=60.0)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), httpx.RemoteProtocolError)
    (record,) = srv.requests
    assert record.abandoned and record.status is None
    assert record.finished is not None
    assert srv.in_flight == 0


def test_hang_abandoned_when_client_disconnects() -> None:
    with FakeLLMServer(max_hang=600.0) as srv:
        srv.add_rule(hang=True)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.url}/chat/completions", json=chat_body("x"), timeout=0.3)
        # The hang would last max_hang (600 s): idle within the wait's bound means the
        # server noticed the client going away.
        assert srv.wait_idle(timeout=60.0)
        (record,) = srv.requests
        assert record.abandoned and record.status is None


def test_latency_recorded_in_timestamps() -> None:
    with FakeLLMServer(latency=0.2) as srv:
        srv.add_rule("slower", latency=0.1)
        began = time.monotonic()
        post(srv, "fast")
        post(srv, "slower")
        elapsed = time.monotonic() - began
        fast, slower = srv.requests
        assert fast.duration is not None and slower.duration is not None
        assert fast.duration >= 0.2
        assert slower.duration >= 0.3
        assert fast.finished is not None
        assert began <= fast.started < fast.finished <= slower.started
        assert elapsed >= 0.5


def test_max_in_flight_with_concurrent_requests() -> None:
    workers = 6
    # Each request is held for 3 s so that all six overlap even when thread start-up is slow
    # on a busy machine; the wait returns as soon as they do.
    with FakeLLMServer(latency=3.0) as srv:
        results: list[int] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            status = post(srv, f"request {i}").status_code
            with lock:
                results.append(status)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(workers)]
        for thread in threads:
            thread.start()
        assert srv.wait_for_in_flight(workers, timeout=60.0)
        for thread in threads:
            thread.join(timeout=60.0)
        assert not any(thread.is_alive() for thread in threads)
        assert results == [200] * workers
        assert srv.max_in_flight == workers
        assert srv.in_flight == 0
        assert sorted(r.index for r in srv.requests) == list(range(workers))


async def _litellm_stream(srv: FakeLLMServer, text: str) -> tuple[str, Any]:
    response = await litellm.acompletion(
        model="openai/test-model",
        api_base=srv.url,
        api_key="sk-test",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
        num_retries=0,
    )
    pieces: list[str] = []
    usage = None
    async for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    return "".join(pieces), usage


@IGNORE_LITELLM_READONLY_WARNING
@IGNORE_LITELLM_MODEL_FIELDS_DEPRECATION
def test_litellm_streaming_text_and_usage() -> None:
    reply = "Alpha beta gamma delta epsilon zeta eta theta"
    with FakeLLMServer() as srv:
        srv.add_rule("greek", content=reply, chunk_delay=0.01)
        text, usage = asyncio.run(_litellm_stream(srv, "list some greek letters"))
        assert text == reply
        assert usage is not None
        assert usage.prompt_tokens == 4
        assert usage.completion_tokens == 8
        assert usage.total_tokens == 12
        (record,) = srv.requests
        assert record.model == "test-model"
        assert record.stream is True
        assert record.headers["authorization"] == "Bearer sk-test"
        assert record.body["stream_options"] == {"include_usage": True}


async def _litellm_call(srv: FakeLLMServer, text: str, **kwargs: Any) -> Any:
    return await litellm.acompletion(
        model="openai/test-model",
        api_base=srv.url,
        api_key="sk-test",
        messages=[{"role": "user", "content": text}],
        num_retries=0,
        **kwargs,
    )


@IGNORE_LITELLM_READONLY_WARNING
def test_litellm_errors_map_to_litellm_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with FakeLLMServer() as srv:
        srv.add_rule("limited", status=429, retry_after=1)
        srv.add_rule("broken", status=500)
        srv.add_rule("slow", latency=5.0)
        response = asyncio.run(_litellm_call(srv, "hello"))
        assert response.choices[0].message.content == "Reply to: hello"
        with pytest.raises(RateLimitError):
            asyncio.run(_litellm_call(srv, "limited"))
        with pytest.raises(InternalServerError):
            asyncio.run(_litellm_call(srv, "broken"))
        with pytest.raises(Timeout):
            asyncio.run(_litellm_call(srv, "slow", timeout=0.3))
        assert srv.wait_idle(timeout=60.0)
        assert [r.status for r in srv.requests] == [200, 429, 500, None]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_script_mode_prints_url_and_exits_on_signal(signum: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "--port", "0", "--latency", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        assert ready, "server script printed nothing within 10 s"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        response = httpx.post(f"{url}/chat/completions", json=chat_body("ping"), timeout=TIMEOUT)
        assert response.json()["choices"][0]["message"]["content"] == "Reply to: ping"
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_structured_requests_get_fitting_json_and_a_share_of_first_answers_is_invalid() -> None:
    schema = {"type": "object", "properties": {"level": {"type": "string", "enum": ["a", "b"]},
                                               "ok": {"type": "boolean"}},
              "required": ["level", "ok"], "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with FakeLLMServer(invalid_first_structured=0.3) as server:
        replies = []
        for n in range(10):
            body = {"model": "m", "messages": [{"role": "user", "content": f"q{n}"}],
                    "response_format": response_format}
            answer = httpx.post(f"{server.url}/chat/completions", json=body, timeout=10).json()
            replies.append(answer["choices"][0]["message"]["content"])
        reask = {"model": "m", "response_format": response_format, "messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "{"},
            {"role": "user", "content": "fix it"}]}
        httpx.post(f"{server.url}/chat/completions", json=reask, timeout=10)
        records = server.requests
    assert [r.structured for r in records] == ["native"] * 11
    assert sum(r.invalid for r in records) == 3  # 30 % of ten first answers, spread evenly
    assert not records[-1].invalid  # a re-ask is answered right
    for record, reply in zip(records, replies, strict=False):
        if not record.invalid:
            assert json.loads(reply) == {"level": "a", "ok": True}
