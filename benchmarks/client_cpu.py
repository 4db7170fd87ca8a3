"""Client CPU per call at 1,000-token answers, streamed (one token a chunk, as providers send
them) and not, through ``LiteLLMClient`` exactly as the engine calls it.

The local test server runs in its own process, so only the client's CPU is counted (process
time of this process: every thread litellm uses included). Calls run one after another.

    python benchmarks/client_cpu.py [--calls 30] [--tokens 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from _common import local_server

from dworkers.llm import LiteLLMClient, LLMRequest


async def cpu_per_call(client: LiteLLMClient, url: str, *, stream: bool, calls: int,
                       tokens: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call."""
    pieces = 0

    def on_delta(piece: str) -> None:
        nonlocal pieces
        pieces += 1

    request = LLMRequest("openai/bench-model", [{"role": "user", "content": "Write at length."}],
                         60.0, "bench", "analyst", url, stream=stream)
    await client.complete(request, on_delta)  # warm: connection code, provider config
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        completion = await client.complete(request, on_delta)
        assert completion.completion_tokens == tokens, completion.completion_tokens
    return ((time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark")
    client = LiteLLMClient()
    client.litellm  # noqa: B018 - import it before measuring
    with local_server("--reply-tokens", str(args.tokens), "--stream-chunk-tokens", "1") as url:
        print(f"client CPU per call, {args.tokens}-token answers, {args.calls} calls each:")
        figures = {}
        for stream in (True, False):
            cpu, wall = asyncio.run(cpu_per_call(client, url, stream=stream, calls=args.calls,
                                                 tokens=args.tokens))
            figures[stream] = cpu
            label = f"streamed ({args.tokens} chunks)" if stream else "not streamed"
            print(f"  {label:24} {cpu * 1000:7.1f} ms CPU   {wall * 1000:7.1f} ms wall")
        print(f"  streaming costs {figures[True] / figures[False]:.1f}× the CPU of one whole "
              "answer")


if __name__ == "__main__":
    main()
