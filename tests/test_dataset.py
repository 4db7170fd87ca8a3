"""Reading and checking dataset files: rows, keys, inputs, and every problem at once."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from dworkers.dataset import reader as dataset
from dworkers.dataset.reader import check, safe_name
from dworkers.errors import InputError


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, **kwargs: object) -> list[str]:
    kwargs.setdefault("required", ["brief"])
    with pytest.raises(InputError) as caught:
        check(path, **kwargs)  # type: ignore[arg-type]
    return [p.render() for p in caught.value.problems]


def test_csv_columns_fill_inputs_and_the_id_column_keys_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id,brief,region,notes\nacme,Audit SOX,EU,vip\n"
                                       'globex,"Audit, with comma",US,\n')
    data = check(path, required=["brief"], optional=["region", "tone"], fixed={"tone": "dry"})
    assert (data.rows_count, data.key_column, data.input_columns) == (2, "id", ["brief", "region"])
    rows = list(data.rows())
    assert [r.key for r in rows] == ["acme", "globex"]
    assert [r.line for r in rows] == [2, 3]
    # Columns that are not inputs are kept with the row but never passed to the plan.
    assert rows[0].values["notes"] == "vip" and "notes" not in rows[0].inputs
    assert rows[1].inputs == {"brief": "Audit, with comma", "region": "US", "tone": "dry"}


def test_without_an_id_column_rows_are_keyed_by_their_number(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "brief\none\n\ntwo\n")
    rows = list(check(path, required=["brief"]).rows())
    assert [(r.key, r.line) for r in rows] == [("1", 2), ("2", 4)]  # blank lines are not rows


def test_key_option_names_the_key_column(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.jsonl", '{"id": 1, "ticket": "T-9", "brief": "x"}\n')
    [row] = check(path, required=["brief"], key="ticket").rows()
    assert row.key == "T-9"
    assert problems(path, key="tikcet") == [
        f"--data: --key 'tikcet' is not a name in the first row of {path} — "
        "did you mean 'ticket'?"]


def test_jsonl_numbers_and_booleans_become_text_and_null_is_absent(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.jsonl",
                 '{"id": 7, "brief": "b", "n": 1.5, "big": 12345678901234567890, "ok": true, '
                 '"tone": null}\n\n')
    [row] = check(path, required=["brief"], optional=["tone", "n"]).rows()
    assert row.key == "7"
    assert row.values == {"id": "7", "brief": "b", "n": "1.5", "big": "12345678901234567890",
                          "ok": "true"}
    assert row.inputs == {"brief": "b", "n": "1.5"}  # tone: null leaves the default to apply


def test_every_problem_of_a_jsonl_file_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.jsonl", "\n".join([
        '{"id": "a", "brief": "x"}',
        "[1, 2]",
        '{"id": "b", "brief": {"text": "nested"}, "tags": ["x"]}',
        '{"id": "a", "brief": "again"}',
        "{not json",
        '{"id": "c"}',
        '{"id": "d", "brief": "x", "id": "e"}',
        '{"id": "", "brief": "x"}',
        '{"id": "f", "brief": NaN}',
    ]) + "\n")
    found = problems(path)
    assert [line.split(":")[1] for line in found] == ["2", "3", "4", "5", "6", "7", "8", "9"]
    assert "line holds a list, not an object" in found[0]
    assert "'brief' holds an object; 'tags' holds a list: values must be text" in found[1]
    assert "key 'a' repeats the key of line 1" in found[2]
    assert "not a JSON object" in found[3]
    assert "row has no value for required input 'brief'" in found[4]
    assert "name 'id' appears twice" in found[5]
    assert "row has no key (column 'id' is empty)" in found[6]
    assert "NaN is not a number JSON allows" in found[7]
    assert all(" — " in line for line in found)  # every problem says how to fix it


def test_every_problem_of_a_csv_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id,brief,region\na,x,EU\nb,,EU\na,y,US\nc,z\n")
    assert problems(path) == [
        f"{path}:3: row has an empty value for required input 'brief' — fill it in, or "
        "remove the row",
        f"{path}:4: key 'a' repeats the key of line 2 — keys must be unique: fix the value, or "
        "choose another --key column",
        f"{path}:5: row has 2 values for 3 columns — give every row one value per header "
        'column (quote values that hold commas: "a, b")',
    ]


def test_a_required_input_no_column_gives_is_one_problem_naming_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id,breif\na,x\nb,y\n")
    assert problems(path) == [
        f"{path}:1: no column gives the plan's required input 'brief' — rename column 'breif' "
        "to 'brief', or pass -i brief=..."]
    data = check(path, required=["brief"], fixed={"brief": "same for all"})
    assert [r.inputs for r in data.rows()] == [{"brief": "same for all"}] * 2


def test_an_input_given_by_a_column_and_by_dash_i_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "brief\nx\n")
    [found] = problems(path, fixed={"brief": "y"})
    assert "input 'brief' is given both by a column and by -i" in found


def test_keys_that_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id,brief\nAcme,x\nacme,y\n")
    [found] = problems(path)
    assert "key 'acme' repeats key 'Acme' of line 2" in found


def test_header_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id,brief,,brief\na,b,c,d\n")
    found = problems(path)
    assert "column 3 has no name" in found[0]
    assert "column 'brief' appears twice in the header (columns 2 and 4)" in found[1]


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("rows.csv", "", "the file is empty: no header row"),
    ("rows.csv", "id,brief\n", "the file has no rows"),
    ("rows.jsonl", "\n\n", "the file has no rows"),
    ("rows.csv", 'id,brief\na,"never closed\n', "the CSV cannot be read from here"),
    ("rows.csv", b"id,brief\na,caf\xe9\n", "line is not UTF-8 text (byte 6 of the line)"),
])
def test_unreadable_files(tmp_path: Path, name: str, text: str | bytes, expected: str) -> None:
    [found] = problems(write(tmp_path, name, text))
    assert expected in found


def test_file_level_mistakes_are_usage_errors(tmp_path: Path) -> None:
    assert "is neither .csv nor .jsonl" in problems(write(tmp_path, "rows.tsv", "a\tb\n"))[0]
    assert "no data file" in problems(tmp_path / "missing.csv")[0]
    (tmp_path / "dir.csv").mkdir()
    assert "is a directory" in problems(tmp_path / "dir.csv")[0]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "\ufeffid,brief\nacme,x\n")
    assert [r.key for r in check(path, required=["brief"]).rows()] == ["acme"]


def test_hostile_files_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "MAX_LINE_BYTES", 64)
    monkeypatch.setattr(dataset, "MAX_PROBLEMS", 3)
    lines = [json.dumps({"id": str(i), "brief": "x" * (100 if i % 2 else 1)}) for i in range(10)]
    found = problems(write(tmp_path, "rows.jsonl", "\n".join(lines) + "\n"))
    assert len(found) == 4  # three shown, the rest counted
    assert "line is longer than" in found[0] and found[0].startswith(f"{tmp_path}/rows.jsonl:2:")
    assert found[-1].endswith("... and 2 more problems — fix the ones above and check again")


def test_keys_must_be_short_plain_text(tmp_path: Path) -> None:
    lines = [json.dumps({"id": key, "brief": "x"}) for key in ("a\nb", "k" * 300)]
    path = write(tmp_path, "rows.jsonl", "\n".join(lines) + "\n")
    found = problems(path)
    assert "holds control characters" in found[0]
    assert "is longer than 200 characters" in found[1]


def test_the_rows_that_run_are_the_rows_that_were_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id,brief\n" + "".join(f"r{i},row {i}\n"
                                                            for i in range(1000)))
    data = check(path, required=["brief"])
    # The file changes after the check: a duplicate key appended, a row rewritten.
    with path.open("a") as handle:
        handle.write("r5,appended after the check\n")
    path.write_text(path.read_text().replace("row 0\n", "changed\n"))
    rows, again = data.rows(), data.rows()  # two readers at once do not disturb each other
    assert next(rows).inputs == {"brief": "row 0"}
    assert next(again).key == "r0"
    assert sum(1 for _ in rows) == 999 and sum(1 for _ in again) == 999
    assert len(data.sha256) == 64


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_read_once(tmp_path: Path) -> None:
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=("id,brief\na,one\nb,two\n",))
    writer.start()
    data = check(fifo, required=["brief"])
    writer.join()
    # Reading the rows does not open the FIFO again (nobody would write to it: a hang).
    assert [row.key for row in data.rows()] == ["a", "b"]
    assert [row.key for row in data.rows()] == ["a", "b"]


@pytest.mark.parametrize(("first", "second", "says"), [
    ("G7", "g7", "keys differing only in case"),
    ("caf\u00e9", "cafe\u0301", "composed vs decomposed"),
    ("g7", "  g7 ", "repeats the key of line 2"),
])
def test_keys_that_only_look_different_are_duplicates(tmp_path: Path, first: str, second: str,
                                                     says: str) -> None:
    path = write(tmp_path, "rows.csv", f"id,brief\n{first},x\nother,y\n{second},z\n")
    with pytest.raises(InputError) as caught:
        check(path, required=["brief"])
    [problem] = caught.value.problems
    assert problem.code == "duplicate-key" and problem.line == 4 and "of line 2" in str(problem)
    assert says in str(problem)


def test_each_repeated_key_names_the_first_row_it_repeats_among_other_problems(
        tmp_path: Path) -> None:
    long_key = "k" * 300
    path = write(tmp_path, "rows.csv", "id,brief\n"
                 f"{long_key},x\n"  # line 2: refused as a key, so not the first 'k…' row
                 "Acme,\n"  # line 3: a missing input, but its key counts
                 "beta,x\n"
                 "ACME,y\n"  # line 5 repeats line 3
                 f"{long_key},y\n"  # line 6: refused again, never a repeat
                 "beta,z\n"  # line 7 repeats line 4
                 "acme,z\n")  # line 8 repeats line 3, not line 5
    found = problems(path)
    assert [re.sub(r"\s+", " ", p) for p in found if "repeats" in p] == [
        f"{path}:5: key 'ACME' repeats key 'Acme' of line 3 (keys differing only in case "
        "would share a file) — keys must be unique: fix the value, or choose another --key "
        "column",
        f"{path}:7: key 'beta' repeats the key of line 4 — keys must be unique: fix the value,"
        " or choose another --key column",
        f"{path}:8: key 'acme' repeats key 'Acme' of line 3 (keys differing only in case "
        "would share a file) — keys must be unique: fix the value, or choose another --key "
        "column"]
    assert sum("longer than" in p for p in found) == 2 and sum("empty value" in p
                                                               for p in found) == 1


def test_past_the_problems_shown_repeats_are_counted_and_those_shown_say_their_line(
        tmp_path: Path) -> None:
    rows = "".join(f"k{n},x\n" for n in range(150))
    path = write(tmp_path, "rows.csv", "id,brief\n" + rows + rows)
    found = problems(path)
    assert len(found) == dataset.MAX_PROBLEMS + 1 and "50 more problems" in found[-1]
    for n, problem in enumerate(found[:-1]):
        assert f":{152 + n}: key 'k{n}' repeats the key of line {2 + n} " in problem


def test_checking_keeps_a_set_of_the_keys_not_every_key_and_line(tmp_path: Path) -> None:
    """What ``check`` holds at its peak grows by a set of keys: one string a row (and its slot
    in the set), not the key and its line as well, nor the row itself."""
    import sys
    import tracemalloc

    prefix = "k" * 150

    def peak_of(rows: int) -> int:
        path = write(tmp_path, f"rows-{rows}.csv", "id,brief,note\n" + "".join(
            f"{prefix}{n:06d},brief {n},{'a note to carry along ' * 4}\n" for n in range(rows)))
        tracemalloc.start()
        try:
            check(path, required=["brief"])
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_of(1_000), peak_of(21_000)
    one_key = sys.getsizeof(prefix + "000000")
    assert (large - small) / 20_000 < 2 * one_key


def test_a_key_is_read_without_surrounding_spaces(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id,brief\n  acme ,x\n")
    assert [row.key for row in check(path, required=["brief"]).rows()] == ["acme"]


def test_a_key_with_control_characters_says_so_plainly(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.jsonl", '{"id": "a\\u0007b", "brief": "x"}\n')
    with pytest.raises(InputError) as caught:
        check(path, required=["brief"])
    assert "holds control characters" in str(caught.value) and " is holds" not in str(
        caught.value)


def test_plain_keys_are_their_own_file_names() -> None:
    assert safe_name("acme-corp_2.v1") == "acme-corp_2.v1"
    assert safe_name("42") == "42"


@pytest.mark.parametrize("key", ["a/b", "../etc", ".hidden", "CON", "nul", "a b", "x" * 300,
                                 "é", ""])
def test_unsafe_keys_get_a_plain_name_and_a_digest(key: str) -> None:
    name = safe_name(key)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{16}", name), name
    assert len(name) <= dataset.SAFE_NAME_CHARS + 1 + dataset.DIGEST_CHARS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=2, max_size=20, unique=True))
def test_different_keys_never_share_a_file_name(keys: list[str]) -> None:
    folded = {k.casefold() for k in keys}
    names = [safe_name(k) for k in keys]
    for name in names:
        assert "/" not in name and "\\" not in name and name not in (".", "..")
    if len(folded) == len(keys):  # keys that check() accepts: unique even ignoring case
        assert len({n.casefold() for n in names}) == len(names)
