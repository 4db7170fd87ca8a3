"""The command line: parse, call the library, render, exit. Kept thin on purpose.

Heavy modules (litellm, the engine) are imported inside the commands that need them, so
``dworkers list``, ``validate`` and ``--help`` start fast.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from dworkers import completion
from dworkers.errors import DworkersError, Problem, ProblemsError, shown

if TYPE_CHECKING:
    from typer._click import Context, HelpFormatter

# pydantic scans every installed distribution for plugins on its first model (≈20 ms of
# start-up); the command line uses none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

class _Commands(TyperGroup):
    """``dworkers --help`` lists each command with the whole first paragraph of its help,
    wrapped to the terminal (click would cut it at about 45 columns)."""

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            text = command.short_help or (command.help or "").strip().split("\n\n")[0]
            rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    cls=_Commands,
    name="dworkers",
    help="Run plans: DAGs of LLM workers written in YAML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

MAX_RUNS_LISTED = 1_000_000  # a bigger --limit is a typo, not a request for more
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _emit_json(data: Any) -> None:
    from dworkers import view
    from dworkers.text import json_text

    if not view.write_stdout(json_text(data) + "\n"):
        raise typer.Exit(1)


def _print_version(value: bool) -> None:
    if not value:
        return
    import platform
    from importlib import metadata  # not litellm itself: importing it takes a second

    from dworkers import __version__

    try:
        litellm = metadata.version("litellm")
    except metadata.PackageNotFoundError:
        litellm = "not installed"
    sys.stdout.write(f"dworkers {__version__}\nlitellm {litellm}\n"
                     f"Python {platform.python_version()}\n")
    raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version,
                           help="Print the versions of dworkers, litellm and Python.")
    ] = False,
) -> None:
    pass


def _fail(error: DworkersError) -> NoReturn:
    from dworkers import view

    out = view.console()
    if isinstance(error, ProblemsError):
        view.print_problems(out, error.problems)
    else:
        view.print_error(out, str(error))
    raise typer.Exit(error.exit_code)


@app.command("list")
def list_plans(
    tenants: Annotated[
        bool, typer.Option("--tenants", help="List tenants instead of plans.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """List the plans you can run (built-in, ./plans and DWORKERS_PLANS_PATH)."""
    from dworkers import view

    if tenants:
        list_tenants(as_json=as_json)
        return
    from dworkers.catalog import plan_catalog

    plans, problems = plan_catalog()
    if as_json:
        _emit_json(
            [
                {
                    "name": p.name,
                    "steps": p.steps,
                    "required_inputs": p.required_inputs,
                    "description": p.description,
                    "source": view.source_label(p.origin, p.path),
                    "path": p.path,
                }
                for p in plans
            ]
        )
    else:
        out = view.console(stderr=False)
        # Cut descriptions to fit a terminal; a pipe gets whole lines.
        width = out.width if out.is_terminal else 100_000
        out.print(view.plan_table(plans, width), soft_wrap=True)
    if problems:
        out = view.console()
        out.print(f"\n{len(problems)} problem(s) kept some plan files out of this list:")
        view.print_problems(out, problems)


def list_tenants(*, as_json: bool) -> None:
    from dworkers import view
    from dworkers.tenants.registry import tenant_registry

    entries = tenant_registry.entries()
    rows = [
        {
            "id": e.item.id,
            "name": e.item.display_name,
            "default_model": e.item.models.default,
            "source": view.source_label(e.origin, e.path),
            "path": str(e.path) if e.path else None,
        }
        for e in entries
    ]
    if as_json:
        _emit_json(rows)
    else:
        out = view.console(stderr=False)
        out.print(view.tenant_table(rows), soft_wrap=True)
    if tenant_registry.problems:
        view.print_problems(view.console(), tenant_registry.problems)


@app.command()
def validate(
    targets: Annotated[
        list[str], typer.Argument(help="Plan or tenant YAML files, or registered plan names.")
    ],
    tenant: Annotated[str | None, typer.Option(
        help="Also check the plans against this tenant (the MCP servers their steps use).",
        autocompletion=completion.tenants)] = None,
    as_json: JsonOption = False,
) -> None:
    """Check plans and tenants without running anything; report every problem at once."""
    from dworkers import view
    from dworkers.targets import validate_target

    problems: list[Problem] = []
    summaries: list[str] = []
    against = None
    if tenant is not None:
        from dworkers.targets import resolve_tenant

        try:
            against = resolve_tenant(tenant)
        except ProblemsError as exc:
            problems += exc.problems
        except DworkersError as exc:
            problems.append(Problem(str(exc), code="not-found", file=tenant))
    for target in targets:
        found, summary = validate_target(target, against)
        problems += found
        if not found:
            summaries.append(summary)
    if as_json:
        _emit_json([p.to_dict() for p in problems])
    else:
        out = view.console()
        view.print_problems(out, problems)
        for summary in summaries:
            view.print_ok(out, summary)
        if problems:
            out.print(f"{len(problems)} problem(s) found.")
    raise typer.Exit(2 if problems else 0)


@app.command("tools")
def list_tools(
    tenant: Annotated[str | None, typer.Option(
        help="Tenant name or YAML file (default: 'default').",
        autocompletion=completion.tenants)] = None,
    as_json: JsonOption = False,
) -> None:
    """List each MCP server's tools and their parameters (each server is started, asked and
    stopped)."""
    import asyncio

    from dworkers.targets import resolve_tenant
    from dworkers.tools import list_server_tools, parameters_of

    try:
        config = resolve_tenant(tenant or "default")
    except DworkersError as exc:
        _fail(exc)
    found = asyncio.run(list_server_tools(config.mcp_servers))
    if as_json:
        _emit_json({name: tools if isinstance(tools, str) else [
            {"name": t.name, "description": t.description, "parameters": dict(t.parameters)}
            for t in tools] for name, tools in found.items()})
    else:
        if not found:
            typer.echo(f"tenant {config.id!r} declares no MCP servers (mcp_servers:)")
        for name, tools in found.items():
            if isinstance(tools, str):
                typer.echo(f"{name}: cannot list its tools: {tools}")
                continue
            typer.echo(f"{name} ({len(tools)} tool{'' if len(tools) == 1 else 's'})")
            for tool in tools:
                typer.echo(f"  {name}.{tool.name}({parameters_of(tool)})"
                           + (f" — {tool.description.splitlines()[0][:100]}"
                              if tool.description.strip() else ""))
    raise typer.Exit(1 if any(isinstance(t, str) for t in found.values()) else 0)


@app.command()
def show(
    target: Annotated[
        str, typer.Argument(help="A plan name or YAML file, or a run id (a prefix, or 'last').",
                            autocompletion=completion.show_targets)
    ],
    step: Annotated[
        str | None, typer.Argument(help="With a run id: print this step's output.",
                                   autocompletion=completion.steps)
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="tree (default) or mermaid.",
                          autocompletion=completion.show_formats)
    ] = "tree",
    as_json: JsonOption = False,
) -> None:
    """Show a plan (steps, roles, dependencies, inputs) or a recorded run and its outputs."""
    from dworkers import view
    from dworkers.plans.registry import plan_registry
    from dworkers.targets import looks_like_path, resolve_plan

    latest = target.strip().lower() in ("last", "latest")  # the last run, even if a plan is
    if step is not None or latest or not (looks_like_path(target) or plan_registry.has(target)):
        from dworkers.show import show_recorded_run

        try:
            show_recorded_run(target, step, as_json=as_json)
        except DworkersError as exc:
            if step is None and not isinstance(exc, ProblemsError) and "no run" in str(exc):
                _fail(DworkersError(f"no plan or run named {shown(target)} — "
                                    f"{_show_hint(target, plan_registry.names())}"))
            _fail(exc)
        return
    if output_format not in ("tree", "mermaid"):
        _fail(DworkersError(f"unknown format {output_format!r} — use 'tree' or 'mermaid'"))
    try:
        plan = resolve_plan(target)
    except DworkersError as exc:
        _fail(exc)
    if as_json:
        _emit_json(
            {
                "name": plan.name,
                "description": plan.description,
                "required_inputs": plan.required_inputs(),
                "inputs": {name: spec.model_dump(mode="json")
                           for name, spec in (plan.inputs or {}).items()},
                "steps": [s.model_dump(mode="json") for s in plan.steps],
            }
        )
    elif output_format == "mermaid":
        sys.stdout.write(view.mermaid(plan) + "\n")
    else:
        view.console(stderr=False).print(view.plan_tree(plan))


def _show_hint(target: str, plans: list[str]) -> str:
    """What to try when ``show TARGET`` found neither: a close plan name, never TARGET itself
    ('last' names the last run even where a plan is called 'last')."""
    from dworkers.errors import did_you_mean, suggestion

    typed = target.strip()
    guess = did_you_mean(typed, [name for name in plans if name.casefold() != typed.casefold()])
    if guess:
        return suggestion(target, guess)
    if typed in plans:
        return (f"{shown(typed)} names the last run here; to show the plan, give its file "
                "(see 'dworkers list')")
    return "run 'dworkers list' for plans, 'dworkers runs' for runs"


@app.command("runs")
def list_runs(
    plan: Annotated[str | None, typer.Option(help="Only runs of this plan.")] = None,
    status: Annotated[
        str | None, typer.Option(help="succeeded, failed, interrupted or running.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_RUNS_LISTED, help="How many runs to list.")
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    """List recent runs, newest first (see 'dworkers show RUN_ID')."""
    from dworkers import view
    from dworkers.history import History

    try:
        with History() as history:
            records = history.list_runs(plan=plan, status=status, limit=limit)
    except DworkersError as exc:
        _fail(exc)
    if as_json:
        _emit_json([r.to_dict() for r in records])
        return
    out = view.console(stderr=False)
    if not records:
        view.console().print("no runs yet — try: dworkers run compliance-audit --mock "
                             '--input brief="..."')
        return
    out.print(view.runs_table(records, out.width if out.is_terminal else 100_000),
              soft_wrap=True)


@app.command()
def run(
    plan: Annotated[
        str | None,
        typer.Argument(help="A plan name (see 'dworkers list') or YAML file; optional with "
                       "--resume.", autocompletion=completion.plans),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="NAME=VALUE, or NAME=@file to read the value.",
                     autocompletion=completion.inputs),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Tenant id or YAML file [default: default].",
                                 autocompletion=completion.tenants)
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model for every step [env: DWORKERS_MODEL].")
    ] = None,
    api_base: Annotated[
        str | None, typer.Option(help="API base URL [env: DWORKERS_API_BASE].")
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(min=1, help="Steps running at once (default: tenant's).")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option(min=0, help="Stop starting steps once this much USD is spent.")
    ] = None,
    fail_fast: Annotated[
        bool | None,
        typer.Option("--fail-fast/--no-fail-fast", help="Cancel everything when a step fails. "
                     "With --resume, the resumed run's choice unless given.",
                     show_default=False),
    ] = None,
    mock: Annotated[
        bool | None,
        typer.Option("--mock/--no-mock", help="Answer offline; no key needed. With --resume, "
                     "the resumed run's choice unless given.", show_default=False),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print prompts and schedule; call nothing.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Directory for run folders [default: ./dworkers-runs].")
    ] = None,
    as_json: JsonOption = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only failures and the summary.")
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option(help="Finish an earlier run (id, prefix or 'last'): reuse what succeeded.",
                     autocompletion=completion.runs),
    ] = None,
    no_cache: Annotated[
        bool | None,
        typer.Option("--no-cache/--cache", help="Call the model even for identical prompts. "
                     "With --resume, the resumed run's choice unless given.",
                     show_default=False),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Run the plan once per row of this .csv or .jsonl file.")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="With --data: the column naming each row [default: id, "
                                 "else the row number].", show_default=False),
    ] = None,
    max_failures: Annotated[
        int | None, typer.Option(min=1, help="With --data: start no new row after N failed.")
    ] = None,
    executor: Annotated[
        str, typer.Option(help="With --data: where rows run: local (this process) or ray "
                          "(every core, or a cluster; needs dworkers[ray]).",
                          autocompletion=completion.executors)
    ] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="With --executor ray: join this Ray cluster (or set "
                                 "RAY_ADDRESS) instead of starting one here.",
                                 show_default=False),
    ] = None,
    formats: Annotated[
        list[str] | None,
        typer.Option("--format", help="Deliverables: md, docx, pdf, comma-separated (docx and "
                     "pdf need dworkers[docs]) [default: the plan's or tenant's, else md].",
                     show_default=False),
    ] = None,
    trace: Annotated[
        bool | None,
        typer.Option("--trace/--no-trace", help="Send the run as OpenTelemetry spans (needs "
                     "dworkers[otel]) [default: on when OTEL_EXPORTER_OTLP_ENDPOINT is set].",
                     show_default=False),
    ] = None,
    approve: Annotated[
        list[str] | None,
        typer.Option("--approve", help="Approve this gated step up front (repeatable): the "
                     "run does not stop there.", show_default=False),
    ] = None,
    approve_all: Annotated[
        bool, typer.Option("--approve-all", help="Approve every gated step up front.")
    ] = False,
) -> None:
    """Run a plan: steps start as soon as their dependencies finish; outputs are saved."""
    from dworkers.run import RunRequest, execute

    request = RunRequest(
        plan=plan, inputs=inputs or [], tenant=tenant, model=model, api_base=api_base,
        max_concurrency=max_concurrency, max_cost=max_cost, fail_fast=fail_fast, mock=mock,
        dry_run=dry_run, out=out, json=as_json, quiet=quiet, resume=resume, no_cache=no_cache,
        data=data, key=key, max_failures=max_failures, executor=executor,
        ray_address=ray_address, formats=formats, trace=trace, approve=approve or [],
        approve_all=approve_all,
    )
    try:
        code = execute(request)
    except DworkersError as exc:
        _fail(exc)
    raise typer.Exit(code)


@app.command("export")
def export(
    run_ref: Annotated[
        str, typer.Argument(metavar="RUN", help="A run id (a prefix, or 'last').",
                            autocompletion=completion.runs)
    ],
    key: Annotated[
        str | None, typer.Argument(help="A dataset run's row.", show_default=False)
    ] = None,
    formats: Annotated[
        list[str] | None,
        typer.Option("--format", help="md, docx or pdf, comma-separated [default: docx].",
                     show_default=False),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Directory for the files [default: here].")
    ] = None,
) -> None:
    """Write the deliverables of an earlier run (or one row) from the history; no call."""
    from dworkers import view
    from dworkers.exports import export_run
    from dworkers.report_files import deliverable_formats
    from dworkers.tenants.config import TenantConfig

    try:
        kinds = deliverable_formats(formats or ["docx"], TenantConfig(id="export"))
        written = export_run(run_ref, key, kinds, out)
    except DworkersError as exc:
        _fail(exc)
    out_console = view.console()
    for path in written:
        view.print_ok(out_console, f"wrote {path}")
NoteOption = Annotated[str, typer.Option("--note", help="Why: kept with the decision, shown "
                                         "in the report.")]
RowsOption = Annotated[str | None, typer.Option(
    "--rows", help="Dataset runs: the rows to decide, keys separated by commas.",
    show_default=False, autocompletion=completion.waiting_rows)]
AllRowsOption = Annotated[bool, typer.Option(
    "--all-rows", help="Dataset runs: every row waiting at the step.")]
RunArgument = Annotated[str, typer.Argument(help="The run (id, prefix or 'last').",
                                            autocompletion=completion.gated_runs)]
GateArgument = Annotated[str, typer.Argument(help="The gated step waiting for approval.",
                                             autocompletion=completion.held_gates)]


def _decide(run_ref: str, step: str, approved: bool, note: str, rows: str | None,
            all_rows: bool) -> None:
    from dworkers import view
    from dworkers.run.gates import GateDecision, decide_gate

    request = GateDecision(run_ref, step.strip(), approved, note,
                           rows.split(",") if rows is not None else None, all_rows)
    try:
        said = decide_gate(request)
    except DworkersError as exc:
        _fail(exc)
    view.print_ok(view.console(), said)


@app.command()
def approve(run_ref: RunArgument, step: GateArgument, note: NoteOption = "",
            rows: RowsOption = None, all_rows: AllRowsOption = False) -> None:
    """Approve a gated step a run waits at; then `dworkers run --resume RUN` continues."""
    _decide(run_ref, step, True, note, rows, all_rows)


@app.command()
def reject(run_ref: RunArgument, step: GateArgument, note: NoteOption = "",
           rows: RowsOption = None, all_rows: AllRowsOption = False) -> None:
    """Reject a gated step: on resume it and everything downstream of it are skipped."""
    _decide(run_ref, step, False, note, rows, all_rows)


class SchemaKind(StrEnum):
    PLAN = "plan"
    TENANT = "tenant"


@app.command("schema")
def schema_command(
    kind: Annotated[SchemaKind, typer.Argument(metavar="plan|tenant", help="Which file format.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write it to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the JSON Schema of plan or tenant files, for editors (see README: Editors)."""
    from dworkers import view
    from dworkers.files import write_atomic
    from dworkers.schema import render_schema

    text = render_schema(kind.value)
    if out is None:
        if not view.write_stdout(text):
            raise typer.Exit(1)
        return
    try:
        write_atomic(out, text)
    except OSError as exc:
        _fail(DworkersError(f"cannot write {out}: {exc.strerror or exc} — choose a writable "
                            "path for --out"))
    view.print_ok(view.console(), f"wrote the {kind.value} schema to {out}")


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (timeout, docker stop, CI) is handled like Ctrl-C


def main() -> None:
    """Console-script entry point: no traceback for anything a user can cause."""
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, _terminated)
    atexit.register(_shut_down_within_bounds)  # registered first: runs after every other
    try:
        app()
    except DworkersError as exc:  # raised outside a command's own handling
        try:
            _fail(exc)
        except typer.Exit as done:
            sys.exit(done.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except OSError as exc:  # standard output closed or full, and the like: no traceback
        from dworkers import view

        view.print_error(view.console(), f"cannot write output: {exc.strerror or exc}")
        view.discard_stdout()
        sys.exit(1)
    finally:
        _exit_on_interruption()


SHUTDOWN_LIMIT_S = 10
"""How long the interpreter's own shutdown may take once every exit handler has run."""


def _exit_at_once(signum: int, frame: object) -> None:
    os._exit(130)  # the output is flushed already; nothing is left worth waiting for


def _exit_on_interruption() -> None:
    """The command is over and its files are written: a late Ctrl-C or SIGTERM (the second of
    two quick presses) ends the process at once with 130, rather than raising a traceback from
    wherever the exit handlers (Ray's shutdown, say) are."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, _exit_at_once)
        signal.signal(signal.SIGTERM, _exit_at_once)


def _shut_down_within_bounds() -> None:
    """The last exit handler. Python's teardown that follows runs no signal handler of ours
    (it resets them to the default, which would end a finished run with -2 instead of 130),
    so late signals are ignored from here — and SIGALRM, whose default ends the process, bounds
    the teardown: it can never hang beyond SHUTDOWN_LIMIT_S, even ignoring Ctrl-C."""
    with contextlib.suppress(ValueError, AttributeError):  # not the main thread; no alarm()
        signal.alarm(SHUTDOWN_LIMIT_S)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    main()
