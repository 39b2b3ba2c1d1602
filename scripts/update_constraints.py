"""Move constraints.txt forward on purpose: re-resolve, run the whole suite, rewrite the file only if it passes.

    python scripts/update_constraints.py                 # newest releases pyproject's ranges admit
    python scripts/update_constraints.py --torch 2.14.1  # and a new torch (with the triton its CUDA build pins)
    python scripts/update_constraints.py --no-tests      # resolve and print; constraints.txt is left alone

Steps: a fresh virtual environment; the triton version that PyPI's (CUDA) torch build pins, read from that
wheel's metadata without downloading it, so a GPU install with the constraints gets the triton its torch
needs; `pip install torch==T triton==V -e .[dev,bench]` with no constraints (the newest releases the ranges
admit); the README's test command in that environment; then constraints.txt rewritten from `pip freeze`.
Commit the new file with the suite's result. Takes as long as the suite (about 15-20 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
# Not pinned: the installers themselves, and the project.
UNPINNED = {"pip", "setuptools", "wheel", "pagebatch"}


def current_torch() -> str:
    for line in CONSTRAINTS.read_text().splitlines():
        if line.startswith("torch=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit("constraints.txt pins no torch: pass --torch")


def triton_pinned_by(torch_version: str, python: str) -> str | None:
    """The triton==V that PyPI's torch==torch_version requires on this platform (None if it requires none)."""
    env = {**os.environ, "PIP_FIND_LINKS": ""}  # PyPI's build, not a local CPU wheel that has no triton pin
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "-q",
                        "--report", str(report), f"torch=={torch_version}"], check=True, env=env)
        requires = json.loads(report.read_text())["install"][0]["metadata"].get("requires_dist", [])
    for requirement in requires:
        match = re.match(r"triton\s*==\s*([\w.]+)", requirement)
        if match:
            return match.group(1)
    return None


def frozen(python: str) -> list[str]:
    out = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable", "--all"], check=True,
                         capture_output=True, text=True).stdout
    pins = []
    for line in out.splitlines():
        if "==" not in line:
            continue
        name, version = line.split("==", 1)
        if name.lower() in UNPINNED:
            continue
        pins.append(f"{name}=={version.split('+', 1)[0]}")  # torch 2.13.0+cpu is pinned as 2.13.0: any build
    return sorted(pins, key=str.lower)


def header(torch_version: str, triton: str | None) -> str:
    today = datetime.date.today().isoformat()
    return "\n".join([
        "# The exact versions CI last passed on: every install in the README, .ci/run, the Dockerfile and compose",
        "# uses them (pip install -c constraints.txt ...). pyproject.toml keeps the ranges for other environments.",
        f"# Resolved {today} on CPython {platform.python_version()} ({platform.machine()}) by",
        "# scripts/update_constraints.py, which re-resolves, runs the suite and rewrites this file.",
        f"# torch {torch_version} is pinned by version only: the local CPU build and PyPI's CUDA build both match;",
        f"# triton {triton} is the one PyPI's torch {torch_version} requires, so a GPU install stays consistent.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", default=None, help="torch version to pin (default: the one constraints.txt pins)")
    ap.add_argument("--no-tests", action="store_true", help="resolve and print the pins; leave constraints.txt alone")
    ap.add_argument("--venv", type=Path, default=None, help="where to build the environment (default: a temp dir)")
    args = ap.parse_args(argv)
    torch_version = args.torch or current_torch()

    venv = args.venv or Path(tempfile.mkdtemp(prefix="pagebatch-constraints-")) / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    triton = triton_pinned_by(torch_version, python)
    wanted = [f"torch=={torch_version}", *([f"triton=={triton}"] if triton else []), "-e", f"{ROOT}[dev,bench]"]
    subprocess.run([python, "-m", "pip", "install", "-q", *wanted], check=True, cwd=ROOT)
    pins = frozen(python)
    text = header(torch_version, triton) + "\n".join(pins) + "\n"
    if args.no_tests:
        print(text)
        return 0
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    suite = subprocess.run([python, "-m", "pytest", "-q"], cwd=ROOT, env=env)
    if suite.returncode != 0:
        print(f"the suite failed on the new versions: constraints.txt is unchanged (environment: {venv})",
              file=sys.stderr)
        return 1
    CONSTRAINTS.write_text(text)
    print(f"constraints.txt rewritten ({len(pins)} pins); commit it with the suite's result")
    return 0


if __name__ == "__main__":
    sys.exit(main())
