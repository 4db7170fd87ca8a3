"""The YAML loader: plain values with positions, hostile files, located errors, fuzzing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from dworkers import loader
from dworkers.errors import LoadError, PlanValidationError, Problem, ProblemsError
from dworkers.plans.base import BasePlan
from dworkers.tenants.config import TenantConfig

REPO = Path(__file__).resolve().parent.parent
BUILTIN_PLANS = sorted((REPO / "plans").glob("*.yaml"))
BUILTIN_TENANTS = sorted((REPO / "tenants").glob("*.yaml"))

MINIMAL = """\
name: tiny
steps:
  - step_id: only
    name: Only
"""


def plan_problems(text: str, file: str = "plan.yaml") -> list[Problem]:
    with pytest.raises(ProblemsError) as info:
        loader.load_plan(file, textwrap.dedent(text))
    return info.value.problems


def where(problems: list[Problem]) -> list[tuple[str, int | None, int | None]]:
    return [(p.code, p.line, p.column) for p in problems]


def only(text: str, file: str = "plan.yaml") -> Problem:
    problems = plan_problems(text, file)
    assert len(problems) == 1, [p.render() for p in problems]
    return problems[0]


# --- what the loader builds -----------------------------------------------------------------


@pytest.mark.parametrize("path", BUILTIN_PLANS, ids=lambda p: p.stem)
def test_builtin_plans_load_and_are_valid(path: Path) -> None:
    plan = loader.load_plan(path)
    assert plan.name == path.stem
    assert len(plan.steps) >= 4
    assert plan.check() == []
    assert plan.required_inputs()


@pytest.mark.parametrize("path", BUILTIN_TENANTS, ids=lambda p: p.stem)
def test_builtin_tenants_load_and_are_valid(path: Path) -> None:
    tenant = loader.load_tenant(path)
    assert tenant.id == path.stem
    assert tenant.check() == []


def test_load_any_tells_plans_from_tenants() -> None:
    assert isinstance(loader.load_any(BUILTIN_PLANS[0]), BasePlan)
    assert isinstance(loader.load_any(BUILTIN_TENANTS[0]), TenantConfig)


def test_values_and_positions_are_recorded() -> None:
    text = textwrap.dedent("""\
        name: tiny
        description: "quoted: text"
        steps:
          - step_id: a
            name: A
            retry_max: 2
            timeout_seconds: 1.5
            depends_on: []
        """)
    data, source = loader.read_yaml("p.yaml", text)
    assert data["description"] == "quoted: text"
    assert data["steps"][0]["retry_max"] == 2
    assert data["steps"][0]["timeout_seconds"] == 1.5
    assert source.at(("steps", 0, "retry_max")) == (6, 16)
    assert source.at(("steps", 0, "retry_max"), key=True) == (6, 5)
    assert source.at(("steps", 0)) == (4, 5)
    assert source.at(("steps", 0, "no-such-key")) == (4, 5)  # falls back to the parent
    assert source.at(()) == (1, 1)


def test_yaml_scalars_follow_yaml_1_1_like_safe_load() -> None:
    text = "a: 012\nb: 0x1F\nc: 1_000\nd: yes\ne: ~\nf: 1e3\ng: '7'\nh: 7\ni: 0\n"
    data, _ = loader.read_yaml("x.yaml", text)
    assert data == {"a": 10, "b": 31, "c": 1000, "d": True, "e": None, "f": "1e3", "g": "7",
                    "h": 7, "i": 0}


def test_merge_keys_work_and_keep_positions() -> None:
    plan = loader.load_plan("m.yaml", textwrap.dedent("""\
        name: merged
        steps:
          - &base
            step_id: a
            name: A
            worker_role: researcher
            retry_max: 2
          - <<: *base
            step_id: b
          - <<: [{timeout_seconds: 5, retry_max: 3}, *base]
            step_id: c
            depends_on: [a, b]
        """))
    _, b, c = plan.steps
    assert (b.name, b.worker_role.value, b.retry_max) == ("A", "researcher", 2)
    assert (c.retry_max, c.timeout_seconds, c.depends_on) == (3, 5.0, ["a", "b"])
    assert plan.source is not None
    assert plan.source.at(("steps", 1, "step_id")) == (9, 14)  # its own key wins
    assert plan.source.at(("steps", 1, "retry_max")) == (7, 16)  # where *base defines it
    assert plan.source.at(("steps", 2, "retry_max")) == (10, 42)  # the first merged mapping


def test_a_problem_inside_a_merged_mapping_points_at_its_definition() -> None:
    problem = only("""\
        name: merged
        steps:
          - &base
            step_id: a
            name: A
            retry_max: -1
          - <<: *base
            step_id: b
        """)
    # both steps have the bad value, which is written (and so reported) once
    assert (problem.code, problem.line, problem.column) == ("out-of-range", 6, 16)


def test_a_merge_key_must_merge_mappings() -> None:
    problem = only("name: p\nsteps:\n  - <<: [1, 2]\n    step_id: a\n    name: A\n")
    assert (problem.code, problem.line, problem.column) == ("invalid-merge", 3, 9)


def test_aliases_are_expanded() -> None:
    plan = loader.load_plan("a.yaml", textwrap.dedent("""\
        name: aliased
        steps:
          - step_id: a
            name: A
            prompt_template: &prompt "Write about {topic}"
          - step_id: b
            name: B
            prompt_template: *prompt
        """))
    assert plan.steps[1].prompt_template == "Write about {topic}"
    assert plan.required_inputs() == ["topic"]


def test_a_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert loader.load_plan(path).name == "tiny"


# --- structure and unknown keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: p\ndescripton: x\nsteps:\n  - {step_id: a, name: A}\n",
         ("unknown-key", 2, 1, "unknown key 'descripton' in the plan — did you mean "
          "'description'?")),
        ("name: p\nsteps:\n  - step_id: a\n    name: A\n    depend_on: [b]\n",
         ("unknown-key", 5, 5, "unknown key 'depend_on' in step 'a' — did you mean "
          "'depends_on'?")),
        ("name: p\ninputs:\n  brief:\n    descr: x\nsteps:\n  - {step_id: a, name: A}\n",
         ("unknown-key", 4, 5, "unknown key 'descr' in inputs.brief of the plan — did you "
          "mean 'description'?")),
        ("name: p\nsteps:\n  - step_id: a\n    color: red\n    name: A\n",
         ("unknown-key", 4, 5, "unknown key 'color' in step 'a' — allowed keys: step_id, name, "
          "description, worker_role, depends_on, prompt_template, retry_max, timeout_seconds, "
          "tools, max_tool_calls, output_schema, when, output_retries, approve")),
    ],
)
def test_unknown_keys_are_rejected_with_a_suggestion(
    text: str, expected: tuple[str, int, int, str]
) -> None:
    problem = only(text)
    assert (problem.code, problem.line, problem.column, problem.render().split(": ", 1)[1]) \
        == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("description: no name\nsteps:\n  - {step_id: a, name: A}\n",
         [("missing-key", 1, 1)]),
        ("name: p\nsteps:\n  - step_id: a\n", [("missing-key", 3, 5)]),
        ("name: p\n", [("missing-key", 1, 1)]),
        ("name: p\nsteps: abc\n", [("invalid-type", 2, 8)]),
        ("name: p\nsteps: []\n", [("no-steps", 2, 8)]),
        ("name: p\nsteps:\n  - just text\n", [("invalid-type", 3, 5)]),
        ("name: p\ninputs: [a]\nsteps:\n  - {step_id: a, name: A}\n", [("invalid-type", 2, 9)]),
        ("name: p\nsteps:\n  - {step_id: 12, name: A}\n", [("invalid-type", 3, 15)]),
        ("name: p\nsteps:\n  - {step_id: a, name: A, depends_on: b}\n  - {step_id: b, name: B}\n",
         [("invalid-type", 3, 39)]),
        ("name: [p]\nsteps:\n  - {step_id: a, name: A}\n", [("invalid-type", 1, 7)]),
    ],
)
def test_structural_problems_are_located(
    text: str, expected: list[tuple[str, int, int]]
) -> None:
    assert where(plan_problems(text)) == expected


def test_a_missing_step_key_names_the_step() -> None:
    problem = only("name: p\nsteps:\n  - step_id: scope\n")
    assert problem.message == "step 'scope' is missing required key 'name'"
    assert problem.hint == "add 'name: ...'"


def test_a_step_given_as_a_string_says_how_to_write_it() -> None:
    problem = only("name: p\nsteps:\n  - scope-audit\n")
    assert problem.message == "step 1 must be a mapping (got 'scope-audit')"


def test_a_non_list_depends_on_suggests_the_list() -> None:
    problem = only("name: p\nsteps:\n  - {step_id: a, name: A, depends_on: b}\n"
                   "  - {step_id: b, name: B}\n")
    assert problem.hint == "write a list: [b]"


@pytest.mark.parametrize(
    ("text", "code", "line", "column"),
    [
        ("- a\n- b\n", "invalid-type", 1, 1),
        ("~\n", "invalid-type", 1, 1),
        ("just text\n", "invalid-type", 1, 1),
    ],
)
def test_a_file_that_is_not_a_mapping(text: str, code: str, line: int, column: int) -> None:
    with pytest.raises(LoadError) as info:
        loader.load_plan("x.yaml", text)
    assert where(info.value.problems) == [(code, line, column)]


def test_tenant_problems_are_all_reported_in_one_pass() -> None:
    text = textwrap.dedent("""\
        id: acme
        nme: ACME
        models:
          default: openai/gpt 4o
          researcher: anthropic/claude-3
          analist: openai/x
        workers:
          analyst:
            max_concurrent_tasks: 0
        limits:
          max_concurrency: 0
        security:
          allowed_models: ["openai/*"]
        """)
    with pytest.raises(ProblemsError) as info:
        loader.load_tenant("t.yaml", text)
    assert [p.render() for p in info.value.problems] == [
        "t.yaml:2:1: unknown key 'nme' in the tenant — did you mean 'name'?",
        "t.yaml:4:12: malformed model name 'openai/gpt 4o' for default — write a litellm model "
        "string such as 'openai/gpt-4o-mini'",
        "t.yaml:5:15: model 'anthropic/claude-3' for researcher is not in "
        "security.allowed_models (openai/*) — pick an allowed model or extend allowed_models",
        "t.yaml:6:3: unknown key 'analist' in models of the tenant — did you mean 'analyst'?",
        "t.yaml:9:27: workers.analyst.max_concurrent_tasks must be ≥ 1 (got 0) — use 1 or more",
        "t.yaml:11:20: limits.max_concurrency must be ≥ 1 (got 0) — use 1 or more",
    ]


def test_tenant_unknown_worker_role_lists_the_valid_ones() -> None:
    with pytest.raises(ProblemsError) as info:
        loader.load_tenant("t.yaml", "id: t\nworkers:\n  wizard: {}\n")
    (problem,) = info.value.problems
    assert (problem.code, problem.line, problem.column) == ("unknown-role", 3, 3)
    assert "analyst, researcher, data_analyst, manager, designer" in problem.hint


# --- hostile files: refused quickly, located, never a traceback ---------------------------------


def refused(text: str, code: str, line: int | None, column: int | None) -> Problem:
    """The file is refused where its limit is crossed: the reader stops there, which is what
    keeps hostile files cheap (benchmarks/hostile_files.py has the figures)."""
    with pytest.raises(ProblemsError) as info:
        loader.load_plan("hostile.yaml", text)
    problem = info.value.problems[0]
    assert (problem.code, problem.line, problem.column) == (code, line, column), problem.render()
    return problem


def test_billion_laughs_is_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    # 9**6 values by line 6: refused at the sixth *e there, the alias that crosses the limit
    problem = refused("\n".join(lines) + "\n", "too-large", 6, 28)
    assert problem.message == ("file expands to more than 500,000 values (alias *e here "
                               "repeats too much)")


def test_alias_bombs_inside_a_plan_are_refused() -> None:
    text = "name: p\nsteps:\n  - &s {step_id: a, name: A, depends_on: &d [a, a, a, a, a, a]}\n"
    refs = "[" + ", ".join(["*d"] * 30) + "]"
    for i in range(6):
        text += f"  - {{step_id: s{i}, name: S, depends_on: &d{i} {refs}}}\n"
        refs = "[" + ", ".join([f"*d{i}"] * 30) + "]"
    problem = refused(text, "too-large", 7, 50)
    assert problem.hint == "simplify the file: an alias counts every value it repeats"


def test_a_huge_flat_list_is_refused_without_reading_it_all() -> None:
    text = "steps: [" + "0," * 2_000_000 + "0]\n"
    refused(text, "too-large", 1, 1_000_005)  # value 500,000 is refused where it starts


def test_deep_block_nesting_is_refused() -> None:
    text = "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n"
    problem = refused(text, "too-large", 66, 131)
    assert problem.message == "values nested more than 64 levels deep"


def test_deep_flow_nesting_is_refused() -> None:
    # libyaml's scanner looks ahead and stops at its own limit of 1,000 levels
    refused("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "too-large", 1, 1003)


def test_a_recursive_alias_is_refused() -> None:
    problem = refused("a: &a\n  b: *a\n", "recursive-alias", 2, 6)
    assert problem.message == "alias *a is used inside the value it refers to"


def test_an_undefined_alias_is_refused() -> None:
    refused("name: *nowhere\nsteps: []\n", "undefined-alias", 1, 7)


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    line = "# " + "x" * 97 + "\n"  # 100 bytes
    path.write_text("name: p\n" + line * 90_000)
    with pytest.raises(LoadError) as info:
        loader.load_plan(path)
    (problem,) = info.value.problems
    assert problem.code == "too-large"
    assert (problem.file, problem.line, problem.column) == (str(path), 83_888, 1)
    assert problem.message == "file is larger than 8 MiB (the limit is reached here)"


def test_non_utf8_bytes_are_located(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: p\nsteps:\n  - step_id: a\n    name: caf\xe9\n")
    with pytest.raises(LoadError) as info:
        loader.load_plan(path)
    (problem,) = info.value.problems
    assert (problem.code, problem.line, problem.column) == ("not-utf8", 4, 14)
    assert problem.message == "file is not UTF-8 text (byte 0xe9 at offset 43)"


def test_lone_surrogates_in_given_text_are_refused() -> None:
    refused("name: p\nsteps: [\ud800]\n", "not-utf8", 2, 9)


@pytest.mark.parametrize(
    ("text", "line", "column", "tag"),
    [
        ("name: !!python/object:os.system x\nsteps: []\n", 1, 7, "!!python/object:os.system"),
        ("!!python/object/apply:os.system [ls]\n", 1, 1, "!!python/object/apply:os.system"),
        ("name: p\nsteps: !!python/object/new:list {}\n", 2, 8, "!!python/object/new:list"),
        ("name: !!python/name:os.system ''\n", 1, 7, "!!python/name:os.system"),
        ("!!python/str k: v\n", 1, 1, "!!python/str"),
        ("name: !!binary aGVsbG8=\n", 1, 7, "!!binary"),
        ("steps: !!set {a: null}\n", 1, 8, "!!set"),
        ("name: !custom x\n", 1, 7, "!custom"),
    ],
)
def test_non_plain_tags_are_refused(text: str, line: int, column: int, tag: str) -> None:
    problem = refused(text, "unsafe-tag", line, column)
    assert problem.message.startswith(f"YAML tag {tag!r} is not allowed")


def test_python_tags_never_run_anything(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\nsteps: []\n"
    with pytest.raises(LoadError):
        loader.load_plan("evil.yaml", text)
    assert not marker.exists()


def test_duplicate_keys_are_refused_naming_both_lines() -> None:
    problem = refused("name: a\nsteps: []\nname: b\n", "duplicate-key", 3, 1)
    assert problem.message == "duplicate key 'name' (first at line 1)"


def test_duplicate_keys_inside_a_step() -> None:
    refused("name: p\nsteps:\n  - step_id: a\n    name: A\n    step_id: b\n", "duplicate-key",
            5, 5)


def test_a_huge_format_spec_is_refused_without_formatting() -> None:
    text = "name: p\nsteps:\n  - step_id: a\n    name: A\n    prompt_template: '{x:>999999999}'\n"
    problem = refused(text, "template-syntax", 5, 23)
    assert problem.message == ("placeholder {x:>999999999} has a format spec, which templates "
                               "do not support")


@pytest.mark.parametrize(
    ("text", "code", "line", "column"),
    [
        ("\x00\x01\x02\xff garbage", "invalid-character", 1, 1),
        ("name: p\nsteps: []\x07\n", "invalid-character", 2, 10),
        ("name: p\n\tsteps: []\n", "yaml-syntax", 2, 1),
        ("name: 'unclosed\nsteps: []\n", "yaml-syntax", 3, 1),
        ("a: 1\n---\nb: 2\n", "yaml-syntax", 2, 1),
        ("", "empty-file", 1, 1),
        ("# only a comment\n", "empty-file", 1, 1),
        ("? [a]\n: b\n", "invalid-key", 1, 3),
        ("name: 2001-13-99\n", "invalid-value", 1, 7),
        ("name: !!int abc\n", "invalid-value", 1, 7),
        ("retry: " + "9" * 5000 + "\n", "invalid-value", 1, 8),
        ("a: b: c\n", "yaml-syntax", 1, 5),
    ],
)
def test_garbage_is_refused_and_located(text: str, code: str, line: int, column: int) -> None:
    refused(text, code, line, column)


def test_binary_garbage_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "random.yaml"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(LoadError) as info:
        loader.load_plan(path)
    problem = info.value.problems[0]
    assert (problem.code, problem.line, problem.column) == ("not-utf8", 2, 118)  # byte 0x80


def test_syntax_errors_are_one_line_with_a_hint() -> None:
    problem = refused("name: p\n\tsteps: []\n", "yaml-syntax", 2, 1)
    assert "\n" not in problem.render()
    assert problem.hint == "indent with spaces, not tabs"


@pytest.mark.parametrize("name", ["dir", "fifo", "missing.yaml"])
def test_files_that_cannot_be_read(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name == "dir":
        path.mkdir()
    elif name == "fifo":
        if not hasattr(__import__("os"), "mkfifo"):
            pytest.skip("no FIFOs here")
        __import__("os").mkfifo(path)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            loader.load_plan(path)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=60)  # a FIFO must not block: a hang guard, not a speed limit
    assert not reader.is_alive(), "reading a FIFO blocked"
    [error] = outcome
    assert isinstance(error, LoadError)
    (problem,) = error.problems
    assert problem.file == str(path)
    assert problem.code in ("not-a-file", "not-found")


def test_long_values_are_cut_in_messages() -> None:
    problem = only("name: p\nsteps:\n  - {step_id: '" + "X" * 5000 + "', name: A}\n")
    assert problem.code == "invalid-step-id"
    assert len(problem.render()) < 300


def test_hostile_files_use_bounded_memory(tmp_path: Path) -> None:
    """The worst files a budget allows, in a process limited to 1 GiB of address space."""
    script = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from dworkers import loader
        from dworkers.errors import ProblemsError
        laughs = ["a: &a [x, x, x, x, x, x, x, x, x]"]
        for prev, name in zip("abcdefgh", "bcdefghi"):
            laughs.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
        texts = ["\\n".join(laughs), "steps: [" + "0," * 4_000_000 + "0]",
                 "steps:\\n" + "  - {a: 1}\\n" * 600_000]
        for text in texts:
            try:
                loader.load_plan("x.yaml", text)
            except ProblemsError as exc:
                print(exc.problems[0].code)
        """)
    if sys.platform != "linux":
        pytest.skip("RLIMIT_AS is only dependable on Linux")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["too-large"] * 3


# --- fuzzing: random and truncated YAML never yields a traceback -------------------------------


def assert_located(problems: list[Problem], file: str) -> None:
    assert problems
    for problem in problems:
        assert problem.file == file
        assert problem.line is not None and problem.line >= 1, problem.render()
        assert problem.column is not None and problem.column >= 1, problem.render()
        assert problem.message and "\n" not in problem.render()


def load_fuzzed(text: str) -> None:
    try:
        plan = loader.load_plan("fuzz.yaml", text)
    except ProblemsError as exc:
        assert_located(exc.problems, "fuzz.yaml")
    else:
        assert plan.check() == []


SOURCES = [path.read_text(encoding="utf-8") for path in BUILTIN_PLANS]
YAMLISH = st.sampled_from([*"{}[]:-,&*!|>'\"#%@` \n\t?<=~.0123456789abcxyz\\",
                           "<<", "---", "...", "!!", "step_id", "steps", "name", "\ud7ff"])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=400))
def test_fuzz_random_text(text: str) -> None:
    load_fuzzed(text)


@FUZZ
@given(st.lists(YAMLISH, max_size=120).map("".join))
def test_fuzz_yaml_shaped_text(text: str) -> None:
    load_fuzzed(text)


@FUZZ
@given(st.sampled_from(SOURCES), st.floats(0, 1))
def test_fuzz_truncated_plans(source: str, fraction: float) -> None:
    load_fuzzed(source[: int(len(source) * fraction)])


@FUZZ
@given(st.sampled_from(SOURCES), st.data())
def test_fuzz_mutated_plans(source: str, data: st.DataObject) -> None:
    text = source
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        junk = data.draw(st.lists(YAMLISH, min_size=0, max_size=4).map("".join))
        cut = data.draw(st.integers(0, 8))
        text = text[:position] + junk + text[position + cut :]
    load_fuzzed(text)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_from_a_file(tmp_path_factory: pytest.TempPathFactory,
                                       raw: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "bytes.yaml"
    path.write_bytes(raw)
    try:
        loader.load_any(path)
    except ProblemsError as exc:
        for problem in exc.problems:
            assert problem.file == str(path)
            assert problem.line is not None and problem.column is not None, problem.render()


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_tenants(text: str) -> None:
    try:
        loader.load_tenant("t.yaml", "id: t\nmodels:\n  default: " + text)
    except (LoadError, ProblemsError) as exc:
        assert_located(exc.problems, "t.yaml")


def test_every_error_type_is_a_problems_error() -> None:
    assert issubclass(LoadError, ProblemsError)
    assert issubclass(PlanValidationError, ProblemsError)


# --- the same values as yaml.safe_load ----------------------------------------------------------

SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.dates()
)
KEYS = st.text(max_size=10)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=25,
)


@pytest.mark.parametrize("path", [*BUILTIN_PLANS, *BUILTIN_TENANTS], ids=lambda p: p.stem)
def test_builtin_files_read_exactly_as_safe_load_reads_them(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert loader.read_yaml(path, text)[0] == yaml.safe_load(text)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, DOCUMENTS, max_size=5), st.sampled_from([None, True, False]),
       st.booleans())
def test_read_yaml_agrees_with_safe_load(data: dict[str, object], flow: bool | None,
                                         aliased: bool) -> None:
    if aliased and data:  # the same object twice: safe_dump writes an anchor and an alias
        data = {**data, "again": next(iter(data.values())), "list": list(data.values())}
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True, sort_keys=False)
    expected = yaml.safe_load(text)
    try:
        assert loader.read_yaml("x.yaml", text)[0] == expected
    except LoadError as exc:  # only the limits this loader adds may refuse what safe_load reads
        assert exc.problems[0].code == "too-large", exc.problems[0].render()


def test_merge_keys_agree_with_safe_load() -> None:
    text = textwrap.dedent("""\
        base: &b {x: 1, y: 2}
        other: &o {y: 3, z: 4}
        one: {<<: *b, x: 9}
        two: {<<: [*b, *o], w: 0}
        three:
          <<: *o
        """)
    assert loader.read_yaml("m.yaml", text)[0] == yaml.safe_load(text)
