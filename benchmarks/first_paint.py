"""Time from process start to the live tree's first paint, and to the first HTTP request.

Runs ``dworkers run`` on a pseudo-terminal against the local test server. The tree should paint
well before litellm (seconds to import) has loaded: target ≤ 0.3 s to first paint.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import tempfile
import time

from _common import FakeLLMServer

RUNS = 5


def once(server: FakeLLMServer, workdir: str) -> tuple[float, float, float]:
    server.reset()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "30",
           "OPENAI_API_KEY": "sk-benchmark", "DWORKERS_HOME": workdir}
    primary, secondary = pty.openpty()
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dworkers.cli", "run", "compliance-audit", "-i", "brief=SOX",
         "--model", "openai/bench-model", "--api-base", server.url, "--out", workdir,
         "--no-cache"],
        stdin=secondary, stdout=secondary, stderr=secondary, env=env, cwd=workdir,
    )
    os.close(secondary)
    first_paint = None
    deadline = start + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.05)
        if ready:
            try:
                data = os.read(primary, 65536)
            except OSError:
                break
            if not data:
                break
            if first_paint is None and b"compliance-audit" in data:
                first_paint = time.monotonic() - start
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(primary)
    end = time.monotonic() - start
    first_request = min(r.started for r in server.requests) - start
    return first_paint or float("nan"), first_request, end


def main() -> None:
    with FakeLLMServer() as server, tempfile.TemporaryDirectory() as workdir:
        results = [once(server, workdir) for _ in range(RUNS)]
    results.sort()
    paint, request, total = results[len(results) // 2]
    print(f"median of {RUNS} runs of 'dworkers run compliance-audit' on a pseudo-terminal:")
    print(f"  first paint of the tree  {paint:6.3f}s")
    print(f"  first HTTP request       {request:6.3f}s")
    print(f"  whole run                {total:6.3f}s")
    print(f"  paint / first request    {paint / request:6.3f}")


if __name__ == "__main__":
    main()
