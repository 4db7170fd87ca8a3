"""What tab completion offers: plan and tenant names, a plan's inputs, run ids, step ids (or a
dataset run's row keys), the gates ``approve``/``reject`` can decide and the rows waiting at
them, and the values of ``--executor`` and ``show --format``.

Each function is a Typer ``autocompletion`` callback, called on every <TAB>. They import what
they need inside, so the command line loads nothing for them until a shell asks, and litellm is
never loaded: plan names come from the cached plan catalog (no YAML while nothing changed),
runs and steps from the history database. A completion never fails loudly: whatever goes wrong
(a broken plan file, a locked or missing history) offers nothing, and the shell falls back to
completing file names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from dworkers.text import crop, one_line

if TYPE_CHECKING:
    from dworkers.plans.base import BasePlan
    from dworkers.results import RunSummary

Items = list[tuple[str, str]]
RECENT_RUNS = 30
"""How many runs ``show <TAB>`` and ``--resume <TAB>`` offer, most recent first."""


HELP_WIDTH = 60
"""zsh and fish show each candidate's help beside it; Typer wraps longer text onto a new line."""


# Typer renders help as Rich markup for zsh and fish: "[/b]" in a plan's description would
# raise, "[draft]" would vanish. Rich's rule: a "[" that may open a tag is escaped by a backslash
# (and backslashes before it are doubled).
_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def _escape_markup(text: str) -> str:
    text = _MARKUP_TAG.sub(lambda m: f"{m[1]}{m[1]}\\{m[2]}", text)
    return text + "\\" if text.endswith("\\") and not text.endswith("\\\\") else text


def _offered_safely(find: Callable[[], Items]) -> Items:
    try:
        found = find()
    except Exception:  # a completion prints into the user's prompt: it must never raise
        return []
    return [(value, _escape_markup(_one_line(about, HELP_WIDTH))) for value, about in found]


def _one_line(text: str, limit: int) -> str:
    """``text`` (from a plan file, or a model's answer: untrusted) as one short printable line."""
    return crop(one_line(text), limit)  # whole escape sequences go, not just their ESC


def plans(incomplete: str) -> Items:
    """Plan names (built-in, DWORKERS_PLANS_PATH, ./plans) starting with ``incomplete``."""

    def find() -> Items:
        from dworkers.catalog import plan_catalog

        return [(p.name, p.description) for p in plan_catalog()[0]
                if p.name.startswith(incomplete)]

    return _offered_safely(find)


def tenants(incomplete: str) -> Items:
    """Tenant ids starting with ``incomplete``, with the company's name."""

    def find() -> Items:
        from dworkers.tenants.registry import tenant_registry

        return [(e.item.id, e.item.display_name) for e in tenant_registry.entries()
                if e.item.id.startswith(incomplete)]

    return _offered_safely(find)


def inputs(ctx: typer.Context, incomplete: str) -> Items:
    """``NAME=`` for each input of the plan named before ``-i`` that is not given yet."""
    # While the last word is an option still waiting for its value (`-i <TAB>`), the parser
    # stops there: the options before it are parsed, the arguments are left in ``ctx.args``.
    plan_ref = ctx.params.get("plan") or next(iter(ctx.args), None)
    if not isinstance(plan_ref, str):
        return []  # no plan named yet
    if "=" in incomplete:  # past the name: a path for a file input, else free text
        return _offered_safely(lambda: _input_paths(_load_plan(plan_ref), incomplete))
    given = {item.partition("=")[0] for item in ctx.params.get("inputs") or ()}

    def find() -> Items:
        plan = _load_plan(plan_ref)
        declared = plan.inputs
        if declared is None:
            names = dict.fromkeys(plan.required_inputs(), "required")
        else:
            names = {name: ("required" if spec.default is None
                            else f"default {_one_line(spec.default, 20)!r}") +
                     (f" · {spec.description}" if spec.description else "")
                     for name, spec in declared.items()}
        return [(f"{name}=", about) for name, about in names.items()
                if name.startswith(incomplete) and name not in given]

    return _offered_safely(find)


MAX_PATHS_OFFERED = 200


def _input_paths(plan: BasePlan, incomplete: str) -> Items:
    """``NAME=PATH`` (or ``NAME=@PATH``) for an input the plan declares ``type: file``: the
    files and folders starting with what is typed, folders ending in '/'."""
    import os

    name, _, value = incomplete.partition("=")
    spec = (plan.inputs or {}).get(name)
    if spec is None or spec.type != "file":
        return []
    at = "@" if value.startswith("@") else ""
    typed = value[len(at):]
    folder, slash, start = typed.rpartition("/")
    directory = os.path.expanduser(folder or "/") if slash else "."
    offered: Items = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.startswith(start) or (entry.name.startswith(".") and not start):
                continue
            path = f"{folder}{slash}{entry.name}"
            offered.append((f"{name}={at}{path}{'/' if entry.is_dir() else ''}",
                            "folder" if entry.is_dir() else "file"))
            if len(offered) >= MAX_PATHS_OFFERED:
                break
    return sorted(offered)


def _load_plan(ref: str) -> BasePlan:
    """The plan ``ref`` names, reading only its own file (found through the catalog)."""
    from dworkers import loader
    from dworkers.catalog import plan_catalog
    from dworkers.targets import looks_like_path

    if looks_like_path(ref):
        return loader.load_plan(ref)
    for summary in plan_catalog()[0]:
        if summary.name == ref and summary.path is not None:
            return loader.load_plan(summary.path)
    raise LookupError(ref)


def runs(incomplete: str) -> Items:
    """The most recent run ids (and ``last``) starting with ``incomplete``, newest first."""
    return _recent_runs(incomplete, lambda record: True)


def gated_runs(incomplete: str) -> Items:
    """What ``approve`` and ``reject`` take first: the recent runs with a step (or row)
    waiting for approval — failed ones too — and ``last`` when the last run is one."""
    return _recent_runs(incomplete, lambda record: bool(record.counts.get("waiting")))


def _recent_runs(incomplete: str, keep: Callable[[RunSummary], bool]) -> Items:
    def find() -> Items:
        from dworkers.history import History, history_path

        if not history_path().is_file():  # completing must not create a history
            return []
        with History() as history:
            records = history.list_runs(limit=RECENT_RUNS)
        found = [(r.run_id, f"{r.plan} · {r.status}") for r in records
                 if r.run_id.startswith(incomplete) and keep(r)]
        if records and keep(records[0]) and "last".startswith(incomplete):
            found.insert(0, ("last", f"{records[0].run_id} · {records[0].plan}"))
        return found

    return _offered_safely(find)


def show_targets(incomplete: str) -> Items:
    """What ``show`` takes: recent runs first, then plan names."""
    return runs(incomplete) + plans(incomplete)


ROW_KEYS_OFFERED = 50
"""How many row keys ``show RUN <TAB>`` offers for a dataset run."""


def steps(ctx: typer.Context, incomplete: str) -> Items:
    """What ``show RUN`` takes next: the step ids of a single run, with each step's status, or
    the row keys of a dataset run, with each row's status."""
    run_ref = ctx.params.get("target")
    if not isinstance(run_ref, str):
        return []

    def find() -> Items:
        from dworkers.history import History, history_path

        if not history_path().is_file():
            return []
        with History() as history:
            record = history.get_run(run_ref)
            if isinstance(record.options.get("data"), dict):
                return _row_keys(history, record.run_id, incomplete)
            records = history.steps(record.run_id)
        return [(s.step_id, f"{s.status} · {s.name}" if s.name else s.status)
                for s in records if s.step_id.startswith(incomplete)]

    return _offered_safely(find)


def _row_keys(history: Any, run_id: str, incomplete: str) -> Items:
    """The first keys, in key order, of a dataset run's rows that start with ``incomplete``."""
    found = history._read(  # one indexed range query, however many rows the run has
        "SELECT key, status FROM rows WHERE run_id = ? AND key >= ? ORDER BY key LIMIT ?",
        (run_id, incomplete, ROW_KEYS_OFFERED))
    return [(str(key), str(status)) for key, status in found if str(key).startswith(incomplete)]


def _argument(ctx: typer.Context, name: str, position: int) -> str | None:
    """A command's argument typed before the word being completed: parsed into
    ``ctx.params``, or (while an option still waits for its value) left in ``ctx.args``."""
    value = ctx.params.get(name)
    if value is None and len(ctx.args) > position:
        value = ctx.args[position]
    return value if isinstance(value, str) else None


def held_gates(ctx: typer.Context, incomplete: str) -> Items:
    """What ``approve RUN`` and ``reject RUN`` take next: the gates the run waits at, with
    each one's question (and, in a dataset run, how many rows wait there)."""
    run_ref = _argument(ctx, "run_ref", 0)
    if run_ref is None:
        return []

    def find() -> Items:
        from dworkers.history import History, history_path
        from dworkers.history.approvals import GateHistory

        if not history_path().is_file():
            return []
        with History() as history:
            held = GateHistory(history).held(history.get_run(run_ref).run_id)
        rows: dict[str, int] = {}
        questions: dict[str, str] = {}
        for gate in held:
            questions.setdefault(gate.step_id, gate.question)
            rows[gate.step_id] = rows.get(gate.step_id, 0) + (gate.row is not None)
        return [(sid, f"{rows[sid]:,} rows · {question}" if rows[sid] else question)
                for sid, question in questions.items() if sid.startswith(incomplete)]

    return _offered_safely(find)


def waiting_rows(ctx: typer.Context, incomplete: str) -> Items:
    """What ``--rows`` takes: the keys of the rows waiting at the gate named before it, as a
    comma-separated list that grows by one key each time (keys already listed are left out)."""
    run_ref, step = _argument(ctx, "run_ref", 0), _argument(ctx, "step", 1)
    if run_ref is None or step is None:
        return []
    listed, comma, start = incomplete.rpartition(",")
    chosen = set(listed.split(",")) if comma else set()

    def find() -> Items:
        from dworkers.history import History, history_path
        from dworkers.history.approvals import GateHistory

        if not history_path().is_file():
            return []
        with History() as history:
            keys = GateHistory(history).rows_waiting_at(
                history.get_run(run_ref).run_id, step.strip(), start,
                ROW_KEYS_OFFERED + len(chosen))
        offered = [key for key in keys if key not in chosen]
        return [(f"{listed}{comma}{key}", "waiting") for key in offered[:ROW_KEYS_OFFERED]]

    return _offered_safely(find)


def executors(incomplete: str) -> Items:
    """Where a dataset's rows can run."""
    about = {"local": "this process", "ray": "every core, or a Ray cluster (dworkers[ray])"}
    return [(name, text) for name, text in about.items() if name.startswith(incomplete)]


def show_formats(incomplete: str) -> Items:
    """How ``show`` draws a plan."""
    about = {"tree": "steps and dependencies as a tree", "mermaid": "a Mermaid flowchart"}
    return [(name, text) for name, text in about.items() if name.startswith(incomplete)]
