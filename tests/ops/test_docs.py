"""The docs stay true: every example in docs/api.md runs, in order, against the live stack (curl
examples in one bash session, Python examples in one interpreter), and every `pagebatch` command in
the docs' and README's shell blocks is one the CLI accepts."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.commands import parse_error

ROOT = Path(__file__).resolve().parents[2]
API_DOC = ROOT / "docs" / "api.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def example_env(stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAGEBATCH_", "OPENAI_"))}
    env.update({"PAGEBATCH_URL": f"http://127.0.0.1:{stack.api_port}", "PAGEBATCH_API_KEY": "key-o",
                "PAGEBATCH_MODEL": stack.model})
    return env


def test_the_curl_examples_run(stack, tmp_path):
    examples = blocks(API_DOC, "bash")
    assert len(examples) >= 5
    script = "set -euo pipefail\n" + "\n".join(examples)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=example_env(stack), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{stack.logs()}"
    out = done.stdout
    assert re.search(r"^started batch_\w+$", out, re.M), out
    assert re.search(r'^status: completed, \{"total":2,"completed":2,"failed":0\}$', out, re.M), out
    assert re.search(r"^review-1: \d+ tokens\nreview-2: \d+ tokens$", out, re.M), out
    assert re.search(r'^\{"custom_id":"review-1","prompt_tokens":\d+,"cached_tokens":\d+,"completion_tokens":\d+\}$',
                     out, re.M), out
    assert re.search(r"^cancel: cancelling$", out, re.M), out
    assert re.search(r"^results so far: 2, complete: true$", out, re.M), out
    assert re.search(r"^progress: completed, [1-9]\d* output tokens$", out, re.M), out
    assert len(re.findall(r"^batch_\w+ (validating|in_progress|cancelling|cancelled|completed)$", out, re.M)) == 2


def test_the_python_examples_run(stack, tmp_path):
    examples = blocks(API_DOC, "python")
    assert len(examples) >= 4
    done = subprocess.run([sys.executable, "-c", "\n\n".join(examples)], cwd=tmp_path, env=example_env(stack),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{stack.logs()}"
    out = done.stdout
    assert re.search(r"^batch_\w+ validating$", out, re.M), out
    assert re.search(r"^completed 3 of 3$", out, re.M), out
    assert sorted(re.findall(r"^(doc-\d) -> \d+ characters$", out, re.M)) == ["doc-0", "doc-1", "doc-2"], out
    assert "failed:" not in out
    assert re.search(r"^prompt tokens: [1-9]\d* completion tokens: [1-9]\d*$", out, re.M), out
    vectors = re.findall(r"^(emb-\d) (\d) -> (\d+) floats$", out, re.M)
    assert sorted(v[:2] for v in vectors) == [(f"emb-{i}", str(k)) for i in range(3) for k in range(2)], out
    assert len({v[2] for v in vectors}) == 1, out  # the model's width, for base64 and float vectors alike
    assert re.search(r"^one batch for two submits: True$", out, re.M), out
    assert re.search(r"^results while running: 3 lines, 0 errors$", out, re.M), out
    assert re.search(r"^progress: completed \{'total': 3, 'completed': 3, 'failed': 0\}$", out, re.M), out
    assert re.search(r"^estimate: completed 3 valid lines, [1-9]\d* prompt tokens$", out, re.M), out


def pagebatch_commands(script: str) -> list[list[str]]:
    """Each `pagebatch ...` command in a shell snippet, without its leading VAR=value assignments."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        for segment in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(segment, comments=True)
            except ValueError:
                continue
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words.pop(0)
            if words and words[0] == "pagebatch":
                found.append(words[1:])
    return found


DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_pagebatch_command_in_the_docs_is_a_real_command():
    commands = [(path.name, cmd) for path in DOC_FILES for block in blocks(path, "bash")
                for cmd in pagebatch_commands(block)]
    subcommands = {cmd[0] for _, cmd in commands if cmd}
    assert {"run", "standalone", "worker"} <= subcommands, subcommands
    bad = [(name, cmd, error) for name, cmd in commands if (error := parse_error(cmd))]
    assert not bad, bad


def test_the_command_extraction_finds_what_it_should():
    script = 'pip install -e . && pagebatch run --out out/\nCUDA_VISIBLE_DEVICES=1 pagebatch worker \\\n  --model m\n'
    assert pagebatch_commands(script) == [["run", "--out", "out/"], ["worker", "--model", "m"]]
    assert parse_error(["worker", "--model", "m", "--gpu", "1"])


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_relative_links_point_at_files_that_exist(path):
    for target in LINK.findall(path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
