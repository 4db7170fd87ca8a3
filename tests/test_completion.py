"""Tab completion, through the protocol the shells' scripts speak (Typer's environment
variables), and the ``--version``, ``--show-completion`` and ``--install-completion`` options."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from support import invoke
from typer.testing import CliRunner

from dworkers import __version__
from dworkers.cli import app
from dworkers.files import data_dir
from dworkers.tenants.registry import tenant_registry

REPO = Path(__file__).resolve().parent.parent
BUILTIN_PLANS = ["compliance-audit", "customer-segmentation", "market-analysis",
                 "process-improvement", "technology-assessment"]
STEPS = ["triage", "scope-audit", "research-regulations", "analyze-gaps", "remediation-plan",
         "executive-briefing"]
LOCAL_PLAN = """\
name: my-local-plan
description: "A plan of this project [draft] [/b]"
inputs:
  topic:
    description: What to write about
  tone:
    description: How it should sound
    default: plain
steps:
  - step_id: draft
    name: Draft
    prompt_template: "Write about {topic} in a {tone} tone"
"""
UNDECLARED_INPUTS = """\
name: undeclared
steps:
  - step_id: one
    name: One
    prompt_template: "{alpha} and {beta}"
"""


@pytest.fixture(autouse=True)
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DWORKERS_MOCK_LATENCY", "0")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def complete(line: str, shell: str = "bash") -> list[str]:
    """What a shell is offered at the end of ``line`` (the command line up to the cursor),
    asked as its completion script asks: one candidate per line (bash, fish) or the zsh
    ``_arguments`` call."""
    env = {"_DWORKERS_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        words = line.split()
        env |= {"COMP_WORDS": line, "COMP_CWORD": str(len(words) - (not line.endswith(" ")))}
    else:
        env["_TYPER_COMPLETE_ARGS"] = line
        if shell == "fish":
            env["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"
    result = CliRunner().invoke(app, [], env=env, prog_name="dworkers")
    assert result.exit_code == 0 and result.stderr == "", (result.exception, result.stderr)
    return [line for line in result.stdout.splitlines() if line]


def mock_runs(count: int, tmp_path: Path) -> list[str]:
    """Record ``count`` offline runs; their ids, most recent first (as ``dworkers runs``)."""
    for i in range(count):
        code, _, err = invoke("run", "compliance-audit", "--mock", "-i", f"brief=audit {i}",
                              "--out", str(tmp_path / "runs"), "--quiet")
        assert code == 0, err
    code, out, _ = invoke("runs", "--json")
    records = json.loads(out)
    assert [r["started_at"] for r in records] == sorted(
        (r["started_at"] for r in records), reverse=True)
    return [r["run_id"] for r in records]


# --- plans, tenants and inputs ---------------------------------------------------------------


def test_run_comp_completes_to_compliance_audit() -> None:
    assert complete("dworkers run comp") == ["compliance-audit"]


def test_run_offers_every_plan_builtin_and_local(cwd: Path) -> None:
    assert complete("dworkers run ") == BUILTIN_PLANS
    (cwd / "plans").mkdir()
    (cwd / "plans" / "local.yaml").write_text(LOCAL_PLAN, encoding="utf-8")
    assert complete("dworkers run ") == sorted([*BUILTIN_PLANS, "my-local-plan"])
    assert complete("dworkers run my") == ["my-local-plan"]


def test_zsh_and_fish_also_get_each_plans_description(cwd: Path) -> None:
    (cwd / "plans").mkdir()
    (cwd / "plans" / "local.yaml").write_text(LOCAL_PLAN, encoding="utf-8")
    # The description is shown as written (Typer renders help as Rich markup: escaped).
    about = "A plan of this project [draft] [/b]"
    assert complete("dworkers run my", "fish") == [f"my-local-plan\t{about}"]
    [zsh] = complete("dworkers run my", "zsh")
    assert zsh == f"""_arguments '*: :(("my-local-plan":"{about}"))'"""


def test_plan_completion_reads_the_cached_catalog(cwd: Path) -> None:
    complete("dworkers run ")
    assert (data_dir() / "plan-catalog.json").is_file()


def test_a_broken_plan_file_does_not_break_completion(cwd: Path) -> None:
    (cwd / "plans").mkdir()
    (cwd / "plans" / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    assert complete("dworkers run comp") == ["compliance-audit"]
    assert complete("dworkers run broken -i ") == []


def test_tenant_completes_builtin_and_local_tenants(cwd: Path) -> None:
    assert complete("dworkers run compliance-audit --tenant ") == ["acme-corp", "default"]
    (cwd / "tenants").mkdir()
    (cwd / "tenants" / "globex.yaml").write_text("id: globex\nname: Globex\n", encoding="utf-8")
    tenant_registry.refresh()  # a shell starts a new process for every <TAB>; this test does not
    assert complete("dworkers run x --tenant g") == ["globex"]
    assert complete("dworkers run x --tenant g", "fish") == ["globex\tGlobex"]


def test_input_offers_the_chosen_plans_inputs_as_name_equals() -> None:
    assert complete("dworkers run market-analysis -i ") == ["brief=", "market=", "geography="]
    assert complete("dworkers run market-analysis --input m") == ["market="]
    assert complete("dworkers run compliance-audit -i ") == ["brief="]


def test_inputs_already_given_are_not_offered_again() -> None:
    assert complete("dworkers run market-analysis -i brief=x -i ") == ["market=", "geography="]
    assert complete("dworkers run --tenant acme-corp market-analysis --input=market=y -i "
                    ) == ["brief=", "geography="]


def test_input_completion_says_what_each_input_is(cwd: Path) -> None:
    (cwd / "plans").mkdir()
    (cwd / "plans" / "local.yaml").write_text(LOCAL_PLAN, encoding="utf-8")
    assert complete("dworkers run my-local-plan -i ", "fish") == [
        "topic=\trequired · What to write about",
        "tone=\tdefault 'plain' · How it should sound",
    ]


def test_input_completion_for_a_plan_file_and_undeclared_inputs(cwd: Path) -> None:
    (cwd / "undeclared.yaml").write_text(UNDECLARED_INPUTS, encoding="utf-8")
    assert complete("dworkers run undeclared.yaml -i ") == ["alpha=", "beta="]
    assert complete(f"dworkers run {REPO / 'plans' / 'market-analysis.yaml'} -i g"
                    ) == ["geography="]


def test_no_input_names_before_a_plan_or_inside_a_value() -> None:
    assert complete("dworkers run -i ") == []
    assert complete("dworkers run compliance-audit -i brief=") == []


# --- runs and steps ----------------------------------------------------------------------------


def test_resume_offers_recent_runs_most_recent_first(tmp_path: Path) -> None:
    ids = mock_runs(3, tmp_path)
    assert complete("dworkers run --resume ") == ["last", *ids]
    assert complete(f"dworkers run --resume {ids[1][:-2]}") == [ids[1]]
    [last, *rest] = complete("dworkers run --resume ", "fish")
    assert last == f"last\t{ids[0]} · compliance-audit"
    assert rest[0] == f"{ids[0]}\tcompliance-audit · succeeded"


def test_show_offers_runs_then_plans(tmp_path: Path) -> None:
    ids = mock_runs(2, tmp_path)
    assert complete("dworkers show ") == ["last", *ids, *BUILTIN_PLANS]
    assert complete("dworkers show mar") == ["market-analysis"]


def test_show_run_offers_its_steps(tmp_path: Path) -> None:
    [run_id] = mock_runs(1, tmp_path)
    assert complete(f"dworkers show {run_id} ") == STEPS
    assert complete("dworkers show last re") == ["research-regulations", "remediation-plan"]
    assert complete(f"dworkers show {run_id[:12]} sc", "fish") == [
        "scope-audit\tsucceeded · Scope Audit"]


def test_show_dataset_run_offers_its_row_keys(tmp_path: Path) -> None:
    keys = ["acme", "acme-eu", "beta", "zeta"]
    (tmp_path / "rows.csv").write_text("id,brief\n" + "".join(f"{k},audit {k}\n" for k in keys))
    code, _, err = invoke("run", "compliance-audit", "--data", "rows.csv", "--mock", "--out",
                          str(tmp_path / "runs"), "--quiet")
    assert code == 0, err
    assert complete("dworkers show last ") == keys
    assert complete("dworkers show last ac") == ["acme", "acme-eu"]
    assert complete("dworkers show last b", "fish") == ["beta\tsucceeded"]


GATED = """\
name: gated
inputs:
  topic: {}
steps:
  - step_id: scope
    name: Scope
    prompt_template: "Scope {topic}"
  - step_id: briefing
    name: Briefing
    depends_on: [scope]
    approve: "Send the briefing to the client?"
    prompt_template: "Brief on {topic}"
"""


def test_approve_offers_waiting_runs_then_their_gates(tmp_path: Path, cwd: Path) -> None:
    [finished] = mock_runs(1, tmp_path)
    (cwd / "gated.yaml").write_text(GATED, encoding="utf-8")
    code, out, err = invoke("run", "gated.yaml", "-i", "topic=tea", "--mock", "--json",
                            "--out", str(tmp_path / "runs"))
    assert code == 3, err
    held = json.loads(out)["run_id"]
    # Only the run that waits: a finished run has nothing to approve.
    assert complete("dworkers approve ") == ["last", held]
    assert finished not in complete("dworkers reject ")
    assert complete(f"dworkers approve {held} ") == ["briefing"]
    assert complete("dworkers reject last b", "fish") == [
        "briefing\tSend the briefing to the client?"]
    assert complete(f"dworkers approve {held} s") == []  # scope succeeded: nothing to decide
    assert complete("dworkers approve no-such-run ") == []


def test_rows_offers_the_keys_waiting_at_the_gate_one_more_each_time(
        tmp_path: Path, cwd: Path) -> None:
    (cwd / "gated.yaml").write_text(GATED, encoding="utf-8")
    (cwd / "rows.csv").write_text("id,topic\nalpha,a\nbeta,b\ngamma,c\n", encoding="utf-8")
    code, out, err = invoke("run", "gated.yaml", "--data", "rows.csv", "--mock", "--json",
                            "--out", str(tmp_path / "runs"))
    assert code == 3, err
    run_id = json.loads(out)["run_id"]
    assert complete(f"dworkers approve {run_id} ", "fish") == ["briefing\t3 rows · Send the "
                                                               "briefing to the client?"]
    assert complete(f"dworkers approve {run_id} briefing --rows ") == ["alpha", "beta", "gamma"]
    assert complete("dworkers approve last briefing --rows g") == ["gamma"]
    assert complete("dworkers reject last briefing --note no --rows alpha,") == [
        "alpha,beta", "alpha,gamma"]
    assert complete("dworkers approve last scope --rows ") == []  # not a gate


def test_executor_and_format_offer_their_values() -> None:
    from dworkers.executors import EXECUTORS

    assert complete("dworkers run --executor ") == list(EXECUTORS)
    assert complete("dworkers run --executor r") == ["ray"]
    assert complete("dworkers show market-analysis --format ") == ["tree", "mermaid"]


def test_no_run_no_steps_and_no_history_created() -> None:
    assert complete("dworkers show ") == BUILTIN_PLANS
    assert complete("dworkers run --resume ") == []
    assert complete("dworkers show last ") == []
    assert complete("dworkers show compliance-audit ") == []
    assert not (data_dir() / "history.db").exists()


# --- nothing heavy is imported to complete -------------------------------------------------------

PROBE = """
import json, os, sys
from dworkers.cli import main
offered = []
for line in json.loads(sys.argv[1]):
    words = line.split()
    os.environ.update(_DWORKERS_COMPLETE="complete_bash", COMP_WORDS=line,
                      COMP_CWORD=str(len(words) - (not line.endswith(" "))))
    sys.argv = ["dworkers"]
    try:
        main()
    except SystemExit:
        pass
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"litellm", "openai", "httpx", "aiohttp",
                                                          "tiktoken", "tokenizers"})
heavy += sorted(m for m in sys.modules if m.startswith(("dworkers.engine", "dworkers.run")))
sys.stderr.write("PROBE " + json.dumps(heavy) + "\\n")
"""


@pytest.mark.slow
def test_completing_never_imports_litellm(tmp_path: Path, cwd: Path) -> None:
    [run_id] = mock_runs(1, tmp_path)
    lines = ["dworkers run comp", "dworkers run market-analysis -i ", "dworkers run x --tenant ",
             "dworkers run --resume ", "dworkers show ", f"dworkers show {run_id} "]
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(lines)],
                            capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
                            env={**os.environ, "DWORKERS_HOME": str(data_dir())})
    assert "compliance-audit" in result.stdout and "brief=" in result.stdout
    assert "acme-corp" in result.stdout and run_id in result.stdout
    assert "scope-audit" in result.stdout, result.stderr
    probe = next(line for line in result.stderr.splitlines() if line.startswith("PROBE "))
    assert json.loads(probe.removeprefix("PROBE ")) == []


# --- --version ----------------------------------------------------------------------------------


def test_version_names_dworkers_litellm_and_python() -> None:
    code, out, _ = invoke("--version")
    assert code == 0
    assert out.splitlines() == [f"dworkers {__version__}",
                                f"litellm {metadata.version('litellm')}",
                                f"Python {platform.python_version()}"]
    assert out.endswith("\n")  # a shell prompt after it starts on its own line


@pytest.mark.slow
def test_version_does_not_import_litellm() -> None:
    probe = ("import sys\nfrom dworkers.cli import main\nsys.argv = ['dworkers', '--version']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('litellm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.splitlines()[-1] == "False"
    assert result.stdout.startswith(f"dworkers {__version__}\n")


# --- installing the completion script ---------------------------------------------------------


@pytest.mark.parametrize(("shell", "marker"), [
    ("bash", "complete -o default -F _dworkers_completion dworkers"),
    ("zsh", "compdef _dworkers_completion dworkers"),
    ("fish", "complete --command dworkers"),
])
def test_show_completion_prints_each_shells_script(shell: str, marker: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Typer detects the user's shell; named explicitly here (read when the app is built).
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    result = CliRunner().invoke(app, ["--show-completion", shell], prog_name="dworkers")
    assert result.exit_code == 0, result.stdout
    assert marker in result.stdout
    assert f"_DWORKERS_COMPLETE=complete_{shell}" in result.stdout


def test_install_completion_writes_the_script_and_sources_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    monkeypatch.setenv("HOME", str(home))
    result = CliRunner().invoke(app, ["--install-completion", "bash"], prog_name="dworkers")
    assert result.exit_code == 0, result.stdout
    script = home / ".bash_completions" / "dworkers.sh"
    assert "_DWORKERS_COMPLETE=complete_bash" in script.read_text(encoding="utf-8")
    assert str(script.relative_to(home)) in (home / ".bashrc").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_real_bash_completes_run_comp(cwd: Path) -> None:
    """The script Typer generates, sourced into bash, asking the installed command."""
    command = Path(sys.executable).with_name("dworkers")
    if not command.exists():
        pytest.skip("the dworkers command is not installed next to this Python")
    script = """
        eval "$(_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION=1 dworkers --show-completion bash)"
        COMP_WORDS=(dworkers run comp); COMP_CWORD=2; _dworkers_completion dworkers
        printf '%s\\n' "${COMPREPLY[@]}"
    """
    env = {**os.environ, "PATH": f"{command.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                            text=True, timeout=60, check=False, env=env)
    assert result.stdout.splitlines() == ["compliance-audit"], result.stderr


def test_a_file_input_completes_files_and_folders(cwd: Path) -> None:
    (cwd / "audit.yaml").write_text(
        "name: a\ninputs:\n  evidence: {type: file}\n  brief: {}\nsteps:\n  - step_id: s\n"
        "    name: S\n    worker_role: analyst\n    prompt_template: '{evidence} {brief}'\n",
        encoding="utf-8")
    (cwd / "evidence").mkdir()
    (cwd / "evidence" / "policy.pdf").write_bytes(b"%PDF")
    assert complete("dworkers run audit.yaml -i evidence=ev") == ["evidence=evidence/"]
    assert complete("dworkers run audit.yaml -i evidence=@evidence/p") == [
        "evidence=@evidence/policy.pdf"]
    assert complete("dworkers run audit.yaml -i brief=ev") == []  # text: nothing to offer
