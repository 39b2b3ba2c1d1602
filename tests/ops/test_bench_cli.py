"""Benchmarks are part of the product: `pagebatch bench NAME` runs an importable module, the documented
`python scripts/bench_*.py` commands still work as thin entry points, and nothing edits sys.path or loads code by
file path."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pagebatch.jobs.bench import BENCHMARKS, run_benchmark

ROOT = Path(__file__).resolve().parents[2]
PYTHON_DIRS = ("api", "engine", "jobs", "kernels", "scripts", "tests")


def _edits_sys_path_or_loads_by_path(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = ast.unparse(node.func)
            if target.startswith("sys.path.") or target.endswith("spec_from_file_location"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {target}")
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [f"{path.relative_to(ROOT)}:{node.lineno} assigns sys.path"
                      for t in targets if ast.unparse(t) == "sys.path"]
    return found


def test_nothing_edits_sys_path_or_loads_code_by_file_path():
    offenders = [hit for d in PYTHON_DIRS for p in sorted((ROOT / d).rglob("*.py"))
                 for hit in _edits_sys_path_or_loads_by_path(p)]
    assert not offenders, offenders


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_answers_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        run_benchmark(name, ["--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_scripts_are_thin_entry_points_to_the_package():
    for script in sorted((ROOT / "scripts").glob("bench_*.py")) + [ROOT / "scripts" / "probe_cpu.py",
                                                                   ROOT / "scripts" / "gpu_check.py"]:
        text = script.read_text(encoding="utf-8")
        assert "from pagebatch.jobs.bench." in text and len(text.splitlines()) <= 8, script.name


def test_documented_script_and_cli_both_run(tmp_path):
    """`python scripts/bench_kernels.py --smoke` from another directory, and the same through `pagebatch bench`."""
    for argv in ([sys.executable, str(ROOT / "scripts" / "bench_kernels.py"), "--smoke"],
                 [sys.executable, "-m", "pagebatch.jobs.commands.cli", "bench", "kernels", "--smoke"]):
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "interpreter smoke" in done.stdout or "No CUDA GPU" in done.stdout, done.stdout
