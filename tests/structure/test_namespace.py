"""One import namespace: the project's modules live under `pagebatch`, and no top-level name is taken from PyPI.

engine/, kernels/, jobs/ and api/ stay at the repository's top level without an __init__.py of their own;
pyproject maps them to pagebatch.<name>. A regular package of the same name anywhere on sys.path (Hugging
Face's `kernels`, which transformers 5 depends on) must win over the bare folder, from any working directory.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("api", "engine", "jobs", "kernels")


def run_python(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout.strip()


def test_top_level_folders_are_not_packages():
    assert [p for p in PARTS if (ROOT / p / "__init__.py").exists()] == []


def test_the_distribution_installs_one_top_level_name():
    tops = {top for top, dists in importlib.metadata.packages_distributions().items() if "pagebatch" in dists}
    assert tops == {"pagebatch"}


def test_pyproject_lists_every_package_of_the_tree():
    """The wheel holds exactly the folders that hold modules (a package missing from the list would be left out)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"pagebatch." + ".".join(d.relative_to(ROOT).parts)
               for part in PARTS for d in [ROOT / part, *(ROOT / part).rglob("*")]
               if d.is_dir() and any(d.glob("*.py"))}
    assert set(config["packages"]) == on_disk
    assert config["package-dir"] == {f"pagebatch.{p}": p for p in PARTS}


@pytest.mark.parametrize("where", ["repo root", "elsewhere"])
def test_bare_names_never_resolve_to_the_project(where, tmp_path):
    """`import kernels` (or engine, jobs, api) from the repo root gives whatever PyPI installed under that name,
    or an empty namespace when nothing did, never this project's code."""
    cwd = ROOT if where == "repo root" else tmp_path
    code = ("import importlib, json\n"
            "out = {}\n"
            f"for name in {PARTS!r}:\n"
            "    try:\n"
            "        m = importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        out[name] = None; continue\n"
            "    out[name] = getattr(m, '__file__', None) or '<namespace>'\n"
            "print(json.dumps(out))")
    found = json.loads(run_python(code, cwd))
    ours = {name: f for name, f in found.items() if f and f != "<namespace>" and Path(f).resolve().is_relative_to(ROOT)}
    assert ours == {}, f"bare names resolved to the project's own files: {ours}"


def test_hugging_face_kernels_wins_inside_the_repo_root():
    """transformers 5 depends on Hugging Face's `kernels`; its hub-kernels integration imports from it."""
    if importlib.util.find_spec("kernels") is None:
        pytest.skip("Hugging Face's kernels package is not installed (transformers < 5 does not need it)")
    out = run_python("import kernels, transformers.integrations.hub_kernels as hk; print(kernels.__file__)", ROOT)
    assert not Path(out).resolve().is_relative_to(ROOT), out


def test_pagebatch_loads_a_gguf_beside_hugging_face_kernels(smollm2_path, tmp_path):
    """In one process started in the repo root: pagebatch's kernels and Hugging Face's, and a GGUF conversion
    through transformers' GGUF integration (which failed with "Kernels are not available" when the bare folder
    shadowed the package)."""
    code = f"""
import importlib.util, json
from pagebatch.kernels.dispatch import select_backend
from pagebatch.engine.models.gguf import convert_gguf
from pagebatch.engine.llm import LLM, SamplingParams
hf = importlib.util.find_spec("kernels")
path = convert_gguf({str(smollm2_path)!r}, {str(tmp_path / "gguf")!r})
llm = LLM(str(path), dtype="float32", max_num_seqs=1, num_kv_blocks=16)
out = llm.generate([[{{"role": "user", "content": "What is the capital of France?"}}]],
                   SamplingParams(temperature=0, max_tokens=8))[0]
print(json.dumps({{"hf": hf.origin if hf else None, "backend": select_backend("auto", "cpu").name, "text": out.text}}))
"""
    result = json.loads(run_python(code, ROOT).splitlines()[-1])
    assert result["hf"] is None or not Path(result["hf"]).resolve().is_relative_to(ROOT)
    assert "Paris" in result["text"], result


def test_the_wheel_holds_pagebatch_only(tmp_path):
    """A non-editable install (the Dockerfile's) gets every module under pagebatch/ and the C++ sources."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    (wheel,) = tmp_path.glob("pagebatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pagebatch"}
    expected = {f"pagebatch/{p.relative_to(ROOT).as_posix()}" for part in PARTS for p in (ROOT / part).rglob("*")
                if p.is_file() and (p.suffix == ".py" or p.parent.name == "csrc")}
    assert expected - names == set()
