"""The layering holds: api -> jobs -> engine -> kernels, jobs' groups in order, no import cycles.

Read from the source (ast), so a lazy import inside a function counts as much as one at the top.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kernels", "engine", "jobs", "api")
# Inside jobs/: a module may import from its own group or a lower one, never from a higher one.
JOBS_RANK = {"jobs.settings": 0, "jobs.logs": 0, "jobs.errors": 0, "jobs.periodic": 0, "jobs.retry": 0,
             "jobs.bounded_cache": 0,
             "jobs.engine_host": 0,
             "jobs.batch": 1, "jobs.store": 2, "jobs.services": 3, "jobs.pipeline": 4, "jobs.worker": 5,
             "jobs.commands": 6, "jobs.bench": 6}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def short(name: str) -> str:
    """``pagebatch.jobs.settings`` as ``jobs.settings``; other modules' names unchanged (and then ignored)."""
    return name.removeprefix("pagebatch.") if name.startswith("pagebatch.") else ""


def project_imports(path: Path, known: set[str]) -> set[str]:
    """Modules of the project that ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(short(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            module = short(node.module)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
    return {n for n in found if n.split(".")[0] in PACKAGES}


def modules() -> dict[str, set[str]]:
    paths = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}
    return {name: project_imports(path, set(paths)) for name, path in paths.items()}


def group(name: str) -> str:
    for prefix in sorted(JOBS_RANK, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    raise AssertionError(f"{name} belongs to no group of jobs/: add it to JOBS_RANK")


def test_packages_only_import_downwards():
    order = {package: i for i, package in enumerate(PACKAGES)}
    wrong = [(m, i) for m, imports in modules().items() for i in imports
             if order[i.split(".")[0]] > order[m.split(".")[0]]]
    assert not wrong, f"upward imports: {wrong}"


def test_jobs_groups_only_import_their_own_or_lower_groups():
    wrong = []
    for name, imports in modules().items():
        if not name.startswith("jobs.") or name == "jobs":
            continue
        for imported in imports:
            if imported.startswith("jobs.") and JOBS_RANK[group(imported)] > JOBS_RANK[group(name)]:
                wrong.append((name, imported))
    assert not wrong, f"imports from a higher group of jobs/: {wrong}"


def test_no_import_cycles():
    table = modules()
    graph = {m: {i for i in imports if i in table and i != m} for m, imports in table.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)


def test_pagebatch_run_loads_neither_celery_nor_the_worker():
    code = ("import sys; import pagebatch.jobs.commands.cli as c, pagebatch.jobs.commands.local_run; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'celery' or m.startswith('pagebatch.jobs.worker')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_redis_keys_are_built_in_one_module():
    offenders = [str(p.relative_to(ROOT)) for package in ("jobs", "api") for p in (ROOT / package).rglob("*.py")
                 if '"pb:' in p.read_text(encoding="utf-8") and p.name != "keys.py"]
    assert not offenders, f"Redis key literals outside jobs/store/keys.py: {offenders}"
