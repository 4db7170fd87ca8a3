"""A non-editable install finds the built-in plans and tenants from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILTIN_NAMES = [
    "compliance-audit",
    "customer-segmentation",
    "market-analysis",
    "process-improvement",
    "technology-assessment",
]


@pytest.mark.slow
def test_pip_install_finds_the_builtin_library(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "DWORKERS_PLANS_PATH", "DWORKERS_TENANTS_PATH",
                        "VIRTUAL_ENV")}
    env["NO_COLOR"] = "1"

    def run(*argv: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(a) for a in argv], cwd=elsewhere, env=env,
                                capture_output=True, text=True, timeout=timeout, check=False)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        return result

    run(sys.executable, "-m", "venv", venv)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", REPO,
        timeout=600)

    listed = json.loads(run(bindir / "dworkers", "list", "--json").stdout)
    assert [p["name"] for p in listed] == BUILTIN_NAMES
    for plan in listed:
        assert plan["source"] == "built-in"
        path = Path(plan["path"])
        assert path.is_relative_to(venv), path  # the copy inside the wheel, not the checkout
        assert plan["steps"] >= 5 and plan["required_inputs"]

    code = (
        "import dworkers, json; from pathlib import Path\n"
        "from dworkers.tenants.registry import tenant_registry\n"
        "roles = Path(dworkers.__file__).parent / 'roles'\n"
        "print(json.dumps([dworkers.__file__, tenant_registry.list_tenants(),\n"
        "                  sorted(p.name for p in roles.glob('*.md'))]))\n"
    )
    module, tenants, roles = json.loads(run(python, "-c", code).stdout)
    assert Path(module).is_relative_to(venv)
    assert tenants == ["acme-corp", "default"]
    assert roles == ["analyst.md", "data_analyst.md", "designer.md", "manager.md",
                     "researcher.md"]

    run(bindir / "dworkers", "validate", *BUILTIN_NAMES)
    shown = run(bindir / "dworkers", "show", "market-analysis", "--format", "mermaid").stdout
    assert shown.startswith("flowchart TD")
