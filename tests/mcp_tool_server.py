"""A small MCP server for the tools tests and benchmark, started by them over stdio (or HTTP).

Its tools: ``lookup`` answers at once; ``slow`` sleeps ``seconds`` then answers; ``hang`` never
answers; ``big`` answers ``size`` characters (with an escape code); ``die`` ends the process.
Each call appends ``{"tool", "start", "end", "pid"}`` (``time.time()``) to the JSON-lines file
named by ``--log``, so a test proves that calls overlapped from the server's own clock.

    python tests/mcp_tool_server.py --log calls.jsonl            # stdio
    python tests/mcp_tool_server.py --http --port 0 --log x.jsonl  # prints its URL, then serves
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time

from mcp.server.fastmcp import FastMCP


def build(log: str | None, port: int = 0) -> FastMCP:
    server = FastMCP("dworkers-test-tools", host="127.0.0.1", port=port, log_level="ERROR")

    def record(tool: str, start: float) -> None:
        if log:
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"tool": tool, "start": start, "end": time.time(),
                                         "pid": os.getpid()}) + "\n")

    @server.tool()
    async def lookup(query: str) -> str:
        """Look up a regulation by its name."""
        start = time.time()
        record("lookup", start)
        return f"regulation {query}: applies to all shipments"

    @server.tool()
    async def slow(seconds: float = 1.0, label: str = "") -> str:
        """Answer after ``seconds``."""
        start = time.time()
        await asyncio.sleep(seconds)
        record("slow", start)
        return f"slow {label} done"

    @server.tool()
    async def hang() -> str:
        """Never answer."""
        record("hang-started", time.time())
        await asyncio.Event().wait()
        return "never"

    @server.tool()
    async def big(size: int = 100_000) -> str:
        """Answer ``size`` characters, an escape code among them."""
        record("big", time.time())
        return "HEAD\x1b[31m" + "x" * size + "TAIL"

    @server.tool()
    async def die() -> str:
        """End the server's process while the call is open."""
        record("die", time.time())
        os._exit(3)

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", default=None)
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.http:
        port = args.port
        if not port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        print(f"http://127.0.0.1:{port}/mcp", flush=True)
        build(args.log, port).run("streamable-http")
    else:
        build(args.log).run("stdio")
    sys.exit(0)


if __name__ == "__main__":
    main()
