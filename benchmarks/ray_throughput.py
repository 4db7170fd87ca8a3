"""``--executor ray`` against ``--executor local`` on a CPU-bound dataset (many short calls).

Every call goes through litellm to the local test server, which runs in its own process and
answers at once, so the client's CPU per call is the limit. Runs through the command line,
``--repeat`` times each, interleaved (local, ray, local, ray, …: the machine's load moves), and
prints medians:

- each executor's throughput end to end (calls / the command's wall time, start-up included:
  what a user waits for; goal ≥ 1.3× with 6,000 rows × 3 steps on 2 cores) and in the steady
  state (calls/s between the server's 10th and 90th percentile request), their ratios;
- the CPU seconds per call of everything the command ran (driver, Ray and its workers, as last
  sampled; the server not included), start-up included: on a shared machine, the figure that
  moves least;
- Ray's start-up, part by part (``startup_parts`` of the run's JSON: Ray's own start, the
  driver's preparation, the coordinator, worker processes, workers built, first rows back),
  and how much later the first call reaches the server than with ``local``;
- the 429 share when the cluster shares a provider limit below what it could send (goal ≤ 3 %);
- what would stop it scaling on N machines, measured: the driver's CPU per row (every row's
  events, results.jsonl line and report are handled there) and the coordinator actor's
  acquire + observe pairs per second (every call waits its turn there).

Usage: python benchmarks/ray_throughput.py [--rows 600] [--steps 1] [--reply-tokens 300]
       [--repeat 1] [--throughput-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import ROOT, chain_plan_yaml

SERVER = ROOT / "tests" / "fake_llm_server.py"
TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server_process(log: Path, rpm: float | None = None) -> Iterator[tuple[str, int]]:
    """The local test server in its own process (its URL and pid); its request log is
    written on exit."""
    args = [sys.executable, str(SERVER), "--reply-tokens", str(REPLY_TOKENS), "--log", str(log)]
    if rpm:
        args += ["--rpm", str(rpm), "--burst", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip(), proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def write_inputs(folder: Path, rows: int, steps: int) -> tuple[Path, Path, Path]:
    # 16 calls at once per process (the default tenant holds an analyst to 4): enough for one
    # process to keep its core busy against a server that answers at once.
    tenant = folder / "bench-tenant.yaml"
    tenant.write_text("id: bench\nname: Bench\nmodels:\n  default: openai/bench-model\n"
                      "workers:\n  analyst:\n    max_concurrent_tasks: 16\n"
                      "limits:\n  max_concurrency: 16\n", encoding="utf-8")
    plan = folder / "bench-plan.yaml"
    plan.write_text(chain_plan_yaml("bench-plan", "Many short calls", steps,
                                    "Step {n}: one line about {topic}"), encoding="utf-8")
    data = folder / "rows.csv"
    with data.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "topic"])
        for i in range(rows):
            writer.writerow([f"r{i}", f"topic number {i}"])
    return tenant, plan, data


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def steady_rate(times: list[float]) -> float:
    """Calls per second between the 10th and the 90th percentile of send times: the steady
    state, without the first call going alone (the pacer's probe) or the last ones trailing."""
    low, high = int(len(times) * 0.1), int(len(times) * 0.9)
    return (high - low) / (times[high] - times[low])


RAY_PARTS = {"workers": "RowWorker", "coordinator": "Coordinator",
             "ray itself": ("raylet", "gcs_server", "runtime_env", "log_monitor", "monitor.py",
                            "dashboard", "ray::IDLE")}


def ray_processes(root: int) -> dict[int, str]:
    """Pid → part for the Ray processes ``root`` started (its descendants)."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        commands[int(entry.name)] = command
    found = {}
    for pid, command in commands.items():
        ancestor, hops = parents.get(pid), 0
        while ancestor not in (None, 0, 1, root) and hops < 20:  # bounded: no cycles in /proc
            ancestor, hops = parents.get(ancestor), hops + 1
        if ancestor != root:
            continue
        for part, marks in RAY_PARTS.items():
            if any(mark in command for mark in ((marks,) if isinstance(marks, str) else marks)):
                found[pid] = part
                break
        else:
            found[pid] = "ray itself"
    return found


def run_cli(folder: Path, executor: str, rpm: float | None = None) -> dict[str, Any]:
    """One dataset run through the command line; figures from the server's request log and
    from sampling the driver process (its CPU time against rows in results.jsonl)."""
    tenant, plan, data = write_inputs(folder, ROWS, STEPS)
    log = folder / f"server-{executor}-{rpm}.jsonl"
    out = folder / f"out-{executor}-{rpm}"
    env = {**os.environ, "OPENAI_API_KEY": "sk-benchmark", "DWORKERS_HOME": str(folder / "home")}
    samples: list[tuple[int, dict[int, float]]] = []  # rows written, CPU seconds by pid
    pids: dict[int, str] = {}
    last_cpu: dict[int, float] = {}
    scanned = 0.0
    with server_process(log, rpm) as (url, server_pid):
        server_cpu = cpu_seconds(server_pid) or 0.0
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dworkers.cli", "run", str(plan), "--data", str(data),
             "--executor", executor, "--tenant", str(tenant), "--api-base", url,
             "--no-cache", "--out", str(out), "--json", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        while proc.poll() is None:
            if executor == "ray" and time.monotonic() - scanned > 1.0:
                pids.update(ray_processes(proc.pid))
                scanned = time.monotonic()
            for pid in [proc.pid, *pids]:
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    last_cpu[pid] = cpu
            results = next(out.glob("*/results.jsonl"), None)
            if proc.pid in last_cpu and results is not None:
                with contextlib.suppress(OSError):
                    samples.append((results.read_bytes().count(b"\n"), dict(last_cpu)))
            time.sleep(0.05)
        stdout, err = proc.communicate()
        wall = time.monotonic() - started
        client_cpu = sum(last_cpu.values())  # as last sampled: every process the run started
        server_cpu = (cpu_seconds(server_pid) or server_cpu) - server_cpu
    if proc.returncode != 0:
        raise SystemExit(f"{executor} run failed ({proc.returncode}):\n{err[-2000:]}")
    summary = json.loads(stdout)
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    times = sorted(r["started"] for r in requests)
    # CPU per row of each part while rows flow (10 % to 90 % of them): start-up excluded.
    low = next(s for s in samples if s[0] >= ROWS * 0.1)
    high = next(s for s in samples if s[0] >= ROWS * 0.9)
    if high[0] <= low[0]:  # results.jsonl grew in one go: the whole run then
        low, high = (0, {}), (ROWS, dict(last_cpu))
    pids[proc.pid] = "driver"  # a Ray process is counted as what it last was (IDLE → worker)
    per_row: dict[str, float] = {}
    for pid, cpu in high[1].items():
        part = pids.get(pid, "ray itself")
        used = (cpu - low[1].get(pid, 0.0)) / (high[0] - low[0]) * 1000
        per_row[part] = per_row.get(part, 0.0) + used
    figures = {
        "wall": wall,
        "end_to_end": len(requests) / wall,
        "cpu_ms_per_call": client_cpu / len(requests) * 1000,
        "startup_parts": summary.get("startup_parts") or {},
        "first_call": times[0] - started,
        "calls": len(requests),
        "rate": steady_rate(times),
        "limited": sum(1 for r in requests if r["status"] == 429),
        "driver_ms_per_row": per_row["driver"],
        "server_ms_per_call": server_cpu / len(requests) * 1000,
        **{f"ms_{part}": value for part, value in per_row.items()},
    }
    print(f"  {executor}: {figures['end_to_end']:.1f} calls/s end to end, "
          f"{figures['rate']:.1f} steady, wall {wall:.1f}s, first call "
          f"{figures['first_call']:.2f}s, {figures['cpu_ms_per_call']:.2f} ms CPU per call, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    return figures


def coordinator_pairs_per_second(seconds: float = 5.0) -> tuple[float, float]:
    """Calls per second (booked and reported) the coordinator serves to 2 busy workers, and
    the actor calls that took."""
    import ray

    from dworkers.budget import LocalBudget
    from dworkers.executors.ray import local_cluster
    from dworkers.executors.ray_coordinator import SharedRateGate, start_coordinator
    from dworkers.ratelimit import LocalRateGate

    class Caller:
        async def hammer(self, coordinator: object, concurrency: int, until: float) -> int:
            # The worker's own gate: calls booked together, answers reported in batches.
            gate = SharedRateGate(coordinator)
            done = 0

            async def loop() -> None:
                nonlocal done
                while time.time() < until:
                    await gate.acquire("m", 100)
                    await gate.observe("m", 200, {}, 100, 100)
                    done += 1

            await asyncio.gather(*(loop() for _ in range(concurrency)))
            return done

    with local_cluster(num_cpus=2):
        gate = LocalRateGate({"m": (1e9, 1e12)}, probe=False)
        coordinator = start_coordinator(gate, LocalBudget(None), name="bench-coordinator")
        callers = [ray.remote(Caller).options(num_cpus=1).remote() for _ in range(2)]
        ray.get([c.hammer.remote(coordinator, 1, time.time() + 0.5) for c in callers])  # warm
        until = time.time() + seconds
        pairs = sum(ray.get([c.hammer.remote(coordinator, 32, until) for c in callers]))
        served = ray.get(coordinator.totals.remote())[2]
    return pairs / seconds, served / seconds


ROWS = 600
STEPS = 1
REPLY_TOKENS = 300  # words per answer: a short deliverable


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def print_startup(runs: list[dict[str, Any]], local_first_call: float) -> None:
    """Ray's start-up part by part (medians; seconds from when the command began to start
    Ray), and the first call's delay against a local run."""
    names = list(dict.fromkeys(name for run in runs for name in run["startup_parts"]))
    parts = {name: statistics.median(run["startup_parts"][name] for run in runs
                                     if name in run["startup_parts"]) for name in names}
    previous: float | None = None
    print("Ray start-up (median s after Ray began to start; + the part's own share):")
    for name, at in sorted(parts.items(), key=lambda part: part[1]):
        share = "" if previous is None else f"  (+{at - previous:.2f}s)"
        print(f"  {name:26} {at:6.2f}s{share}")
        previous = at
    first_call = median_of(runs, "first_call")
    print(f"  first call at the server   {first_call:6.2f}s after the command started "
          f"(local: {local_first_call:.2f}s) → Ray's start-up cost "
          f"{first_call - local_first_call:.2f}s")


ROWS = 600
STEPS = 1
REPLY_TOKENS = 300  # words per answer: a short deliverable


def main() -> None:
    global ROWS, STEPS, REPLY_TOKENS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--reply-tokens", type=int, default=REPLY_TOKENS)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each executor, interleaved; medians are printed")
    parser.add_argument("--throughput-only", action="store_true",
                        help="skip the shared-limit run and the coordinator's figures")
    args = parser.parse_args()
    ROWS, STEPS, REPLY_TOKENS = args.rows, args.steps, args.reply_tokens
    print(f"{ROWS} rows × {STEPS} step(s), {REPLY_TOKENS}-word answers, zero-latency server in "
          "its own process, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="dworkers-bench-") as tmp:
        folder = Path(tmp)
        runs: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
        for _ in range(args.repeat):
            for name in runs:
                runs[name].append(run_cli(folder, name))
        print(f"{'executor':9} {'end to end':>11} {'steady':>9} {'wall':>7} {'first call':>11} "
              f"{'CPU/call':>9} {'driver CPU/row':>15} {'server CPU/call':>16}")
        for name, done in runs.items():
            print(f"{name:9} {median_of(done, 'end_to_end'):7.1f}/s "
                  f"{median_of(done, 'rate'):7.1f}/s {median_of(done, 'wall'):6.1f}s "
                  f"{median_of(done, 'first_call'):10.2f}s "
                  f"{median_of(done, 'cpu_ms_per_call'):6.2f} ms"
                  f" {median_of(done, 'driver_ms_per_row'):12.2f} ms "
                  f"{median_of(done, 'server_ms_per_call'):13.2f} ms")
        if args.repeat > 1:
            print("each run (end to end calls/s, wall): " + "; ".join(
                f"{name} " + ", ".join(f"{run['end_to_end']:.0f}/s {run['wall']:.0f}s"
                                       for run in done) for name, done in runs.items()))
        local, ray_runs = runs["local"], runs["ray"]
        print(f"throughput ratio ray / local: end to end "
              f"{median_of(ray_runs, 'end_to_end') / median_of(local, 'end_to_end'):.2f}× "
              f"(goal ≥ 1.3×), steady state "
              f"{median_of(ray_runs, 'rate') / median_of(local, 'rate'):.2f}×")
        print_startup(ray_runs, median_of(local, "first_call"))
        cluster = ray_runs[len(ray_runs) // 2]
        local_run = local[len(local) // 2]
        parts = ", ".join(f"{part} {cluster[f'ms_{part}']:.2f} ms"
                          for part in ("driver", *RAY_PARTS) if f"ms_{part}" in cluster)
        print(f"CPU per row with ray while rows flow: {parts}; server "
              f"{cluster['server_ms_per_call']:.2f} ms per call")
        # Other work on this machine takes its share of the cores, so the measured ratio moves
        # with the load average. The CPU each call costs does not: on idle cores one local
        # process sends at most one core's worth, the cluster at most every core's worth.
        cores = os.cpu_count() or 1
        ray_ms = sum(cluster[f"ms_{part}"] for part in ("driver", *RAY_PARTS)
                     if f"ms_{part}" in cluster) + cluster["server_ms_per_call"]
        local_cap = min(1000 / local_run["driver_ms_per_row"],
                        cores * 1000 / (local_run["driver_ms_per_row"]
                                        + local_run["server_ms_per_call"]))
        ray_cap = cores * 1000 / ray_ms
        print(f"from CPU per call while rows flow, on {cores} idle cores: local ≤ "
              f"{local_cap:.0f} calls/s, ray ≤ {ray_cap:.0f} calls/s → {ray_cap / local_cap:.2f}×")
        per_row = cluster["driver_ms_per_row"]
        print(f"driver (ray): {per_row:.2f} ms CPU per row while rows flow → one driver keeps "
              f"up with ≈{1000 / per_row:.0f} rows/s (≈{60_000 / per_row * STEPS:.0f} calls/min "
              f"at {STEPS} call(s) per row)")
        if args.throughput_only:
            return
        # A limit at 80 % of what the cluster sends unhindered: the shared gate must hold it.
        rpm = round(cluster["rate"] * 60 * 0.8)
        limited = run_cli(folder, "ray", rpm=rpm)
        share = limited["limited"] / limited["calls"]
        print(f"shared limit {rpm} rpm: {limited['limited']} of {limited['calls']} calls "
              f"answered 429 ({share:.1%}, goal ≤ 3 %), sustained {limited['rate'] * 60:.0f} "
              f"calls/min ({limited['rate'] * 60 / rpm:.0%} of the limit)")
    pairs, served = coordinator_pairs_per_second()
    print(f"coordinator: {pairs:.0f} calls/s booked and reported for 2 saturating workers "
          f"({served:.0f} actor calls/s) → ≈{pairs * 60:.0f} calls/min across the cluster")


if __name__ == "__main__":
    main()
