"""CI runs the README: its quick start, exactly as written, on a copy of this tree in a fresh virtual environment.

The README's second command is what .ci/run runs (checked here). Its first command runs in a new venv, in a
copy of the working tree outside this checkout, with an empty PAGEBATCH_CACHE_DIR, so nothing this checkout
installed or cached can help it; `pagebatch run` then runs again from an unrelated directory. With SmolLM2
fetched into that cache, the README's real-model command must produce real sentences.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
# Words any English sentence about these demo texts is likely to use; noise from random weights has none.
COMMON = {"the", "a", "an", "and", "is", "was", "of", "to", "in", "for", "it", "this", "with", "but", "on",
          "are", "be", "as", "that", "review", "price", "quality", "positive", "negative", "neutral"}


def quick_start() -> list[str]:
    """The commands of the README's quick start block, one per line."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    lang, body = FENCE.search(section).groups()
    assert lang == "bash"
    return [line for line in body.splitlines() if line.strip()]


def real_model_command() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start"):readme.index("### Tested versions")]
    blocks = [body for lang, body in FENCE.findall(section) if lang == "bash"]
    (command,) = [line for line in blocks[1].splitlines() if line.strip()]
    return command


def test_ci_runs_the_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quick_start()[1] in ci


def copy_tree(dest: Path) -> Path:
    """The files a fresh clone of this working tree holds (tracked, and new files git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def fresh_env(venv: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAGEBATCH_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}", "VIRTUAL_ENV": str(venv),
                "PAGEBATCH_CACHE_DIR": str(cache)})
    return env


def run(command: str, cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"$ {command}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def answers(out: Path) -> list[str]:
    lines = [json.loads(line) for line in (out / "output.jsonl").read_text().splitlines()]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    return [line["response"]["body"]["choices"][0]["message"]["content"] for line in lines]


def english(text: str) -> bool:
    words = re.findall(r"[a-z]+", text.lower())
    return len(words) >= 2 and any(w in COMMON for w in words)


@pytest.mark.slow
def test_the_quick_start_on_a_fresh_venv(tmp_path, smollm2_path):
    clone = copy_tree(tmp_path / "pagebatch")
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    elsewhere.mkdir()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = fresh_env(venv, cache)

    # 1. The README's first command, as written, in the clone: the demo model (nothing cached).
    done = run(quick_start()[0], clone, env)
    assert "tiny random-weight demo model" in done.stdout, done.stdout
    batch = json.loads((clone / "out" / "batch.json").read_text())
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 200, "completed": 200, "failed": 0}
    noise = answers(clone / "out")  # every request answered: noise from random weights (EOS first, at times)
    assert len(noise) == 200 and all(isinstance(t, str) for t in noise)

    # 2. Outside the clone: the same command-line tool, and `import kernels` is Hugging Face's in both places.
    run("pagebatch run --out out/ --no-progress", elsewhere, env)
    assert (elsewhere / "out" / "output.jsonl").is_file()
    probe = "import importlib.util; s = importlib.util.find_spec('kernels'); print(s.origin if s else None)"
    for cwd in (clone, elsewhere):
        origin = run(f"python -c \"{probe}\"", cwd, env).stdout.strip()
        assert origin == "None" or Path(origin).resolve().is_relative_to(venv), origin

    # 3. The real-model command (the GGUF placed in the new cache first, to spare a 98 MB download): SmolLM2
    # answers in sentences.
    (cache / "models").mkdir(parents=True)
    shutil.copy2(smollm2_path, cache / "models" / smollm2_path.name)
    done = run(real_model_command(), clone, env)
    assert "SmolLM2-135M-Instruct" in done.stdout, done.stdout
    texts = answers(clone / "out")
    assert len(texts) == 200
    readable = sum(english(t) for t in texts)
    assert readable >= 0.9 * len(texts), [t for t in texts if not english(t)][:10]
