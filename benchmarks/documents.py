"""What documents cost: converting a 100-page PDF and a 10,000-row spreadsheet (time and peak
memory, each in a fresh process), the second conversion of the same files (which converts
nothing: the cache answers), rendering a five-step report to .docx and .pdf, and the size the
docs extra adds to an install.

    python benchmarks/documents.py [--pages 100] [--rows 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from document_samples import (  # noqa: E402
    make_encrypted_pdf,
    make_entity_bomb_docx,
    make_lying_zip,
    make_pdf,
    make_xlsx,
    make_zip_bomb,
)

DOCS_EXTRA = ["pypdf", "python-docx", "openpyxl", "python-pptx", "reportlab", "markdown-it-py"]
BASE = ["typer", "rich", "pyyaml", "pydantic", "litellm"]


def measure_once(path: str) -> None:
    """In a fresh process: convert ``path`` with an empty cache (time, peak RSS), again with
    the same cache (time; nothing converted), and once more with an empty cache under
    tracemalloc (peak of Python's own allocations); print them as JSON."""
    import resource
    import tracemalloc

    from dworkers.documents import ConversionCache, to_markdown

    with tempfile.TemporaryDirectory() as folder:
        cache = ConversionCache(Path(folder) / "a")
        start = time.perf_counter()
        first = to_markdown(path, cache=cache)
        first_seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        second = to_markdown(path, cache=cache)
        second_seconds = time.perf_counter() - start
        tracemalloc.start()
        to_markdown(path, cache=ConversionCache(Path(folder) / "b"))
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print(json.dumps({"first": first_seconds, "second": second_seconds, "rss_mb": rss,
                      "traced_mb": traced, "chars": len(first.markdown),
                      "converted": [first.converted, second.converted]}))


def conversion(label: str, path: Path, runs: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = []
    for _ in range(runs):
        output = subprocess.run([sys.executable, __file__, "--measure", str(path)], env=env,
                                capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output))
    assert all(result["converted"] == [1, 0] for result in results), "second run converted"
    first = statistics.median(result["first"] for result in results)
    second = statistics.median(result["second"] for result in results)
    print(f"{label} ({path.stat().st_size / 2**20:.1f} MB, "
          f"{results[0]['chars']:,} characters of Markdown)")
    print(f"  first conversion  {first:7.3f} s   peak RSS of the process "
          f"{max(r['rss_mb'] for r in results):6.1f} MB, Python allocations peak "
          f"{max(r['traced_mb'] for r in results):.1f} MB")
    print(f"  second conversion {second:7.4f} s   converted 0 files (the cache answered; "
          f"{first / second:,.0f}x faster)")


def hostile(folder: Path) -> None:
    """How long each hostile file takes to be refused."""
    from dworkers.documents import DocumentError, to_markdown

    huge = folder / "huge.pdf"
    with huge.open("wb") as handle:
        handle.truncate(1 << 30)
    loop = folder / "loop"
    (loop / "sub").mkdir(parents=True)
    (loop / "a.txt").write_text("a")
    (loop / "sub" / "back").symlink_to(loop, target_is_directory=True)
    cases = {"zip bomb (.xlsx, 40 MB of one byte)": make_zip_bomb(folder / "bomb.xlsx"),
             "zip declaring 4 GB (.docx)": make_lying_zip(folder / "lying.docx"),
             "XML entity bomb (.docx)": make_entity_bomb_docx(folder / "lol.docx"),
             "encrypted PDF": make_encrypted_pdf(folder / "locked.pdf"),
             "1 GB file (sparse)": huge, "symlink loop in a folder": loop}
    from dworkers.documents import convert_path

    for label, path in cases.items():
        start = time.perf_counter()
        try:
            convert_path(path) if path.is_dir() else to_markdown(path)
        except DocumentError as error:
            code = error.problems[0].code
        else:
            raise AssertionError(f"{label} was not refused")
        print(f"  {label:38} refused ({code}) in {(time.perf_counter() - start) * 1000:6.1f} ms")


def requirement_names(distribution: str) -> list[str]:
    names = []
    for requirement in metadata.requires(distribution) or []:
        if "extra ==" in requirement:
            continue
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        if match:
            names.append(match.group())
    return names


def closure(names: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            todo += requirement_names(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(key)
    return seen


def installed_size(name: str) -> int:
    files = metadata.distribution(name).files or []
    total = 0
    for file in files:
        try:
            total += file.locate().stat().st_size
        except OSError:
            continue
    return total


def extra_size() -> None:
    added = sorted(closure(DOCS_EXTRA) - closure(BASE))
    sizes = {name: installed_size(name) for name in added}
    total = sum(sizes.values())
    fonts = sum(f.stat().st_size for f in (ROOT / "dworkers" / "documents" / "fonts").iterdir())
    print(f"docs extra: {total / 2**20:.1f} MB installed over the base install, in "
          f"{len(added)} distributions:")
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        print(f"  {name:22} {size / 2**20:6.1f} MB")
    print(f"  (dworkers' own bundled PDF fonts: {fonts / 2**20:.1f} MB, in every install)")


def five_step_report() -> list[tuple[str, str]]:
    table = "| Control | Owner | Status | Evidence |\n|---|---|---|---|\n" + "".join(
        f"| C-{n} | CISO | effective | ticket {n}, reviewed quarterly |\n" for n in range(12))
    body = ("## Summary\n\nThe review found **three** gaps and *one* strength.\n\n"
            + "A paragraph of analysis. " * 40 + "\n\n- first point\n- second point\n"
            "  1. detail\n  2. detail\n\n" + table + "\n> Note: figures are unaudited.\n")
    return [(f"Step {n}: analysis", body) for n in range(1, 6)]


def rendering(runs: int) -> None:
    from dworkers.documents.docx_writer import render_docx
    from dworkers.documents.pdf_writer import render_pdf
    from dworkers.tenants.config import BrandingConfig

    sections = five_step_report()
    brand = BrandingConfig(company_name="ACME Audit Partners", primary_color="#1F4E79")
    with tempfile.TemporaryDirectory() as folder:
        for label, render, name in (("DOCX", render_docx, "report.docx"),
                                    ("PDF", render_pdf, "report.pdf")):
            times = []
            for _ in range(runs + 1):  # the first run loads the library and fonts
                start = time.perf_counter()
                render("Five-step report", sections, brand, Path(folder) / name)
                times.append(time.perf_counter() - start)
            size = (Path(folder) / name).stat().st_size
            print(f"five-step report to {label:4}: first {times[0]:.3f} s, then median "
                  f"{statistics.median(times[1:]):.3f} s ({size / 1024:.0f} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure_once(args.measure)
        return
    with tempfile.TemporaryDirectory() as folder:
        os.environ["DWORKERS_HOME"] = str(Path(folder) / "home")  # never the user's cache
        lines = [f"Line {n}: control AC-{n} is owned by the CISO and reviewed quarterly."
                 for n in range(45)]
        pdf = make_pdf(Path(folder) / "policy.pdf", [lines] * args.pages)
        xlsx = make_xlsx(Path(folder) / "matrix.xlsx", rows=args.rows)
        conversion(f"{args.pages}-page PDF", pdf, args.runs)
        conversion(f"{args.rows:,}-row spreadsheet", xlsx, args.runs)
        print("hostile files:")
        hostile(Path(folder))
    rendering(args.runs)
    extra_size()


if __name__ == "__main__":
    main()
