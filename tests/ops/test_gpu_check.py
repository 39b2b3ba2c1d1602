"""scripts/gpu_check.py, the one-call GPU check, rehearsed on CPU: its dry run (--device cpu --quick: tiny models,
a handful of requests) runs every section, each passing or skipped with its reason, writes a strict-JSON report
whose figures are all numbers, evaluates the targets, and finishes well inside the time a device call allows."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"  # the device's one command, rehearsed

from pagebatch.jobs.bench.gpu_check.common import SECTIONS
from pagebatch.jobs.bench.gpu_check.correct import compare, parse_summary, shard

DRY_RUN_LIMIT_S = 170  # the rehearsal takes under a minute on a quiet machine; the budget leaves room for a busy one


def _no_nan(value: str):
    raise ValueError(f"non-finite number {value} in the report")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("gpu-out"), tmp_path_factory.mktemp("gpu-work")
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PAGEBATCH_KERNELS", "TRITON_INTERPRET")}
    env["PAGEBATCH_GPU_SITE"] = str(work / "site")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 is this interpreter
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--quick", "--budget", "150", "--out", str(out), "--workdir", str(work)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=DRY_RUN_LIMIT_S + 30,
    )
    seconds = time.monotonic() - started
    report = json.loads((out / "gpu_report.json").read_text(), parse_constant=_no_nan) if (out / "gpu_report.json").exists() else None
    return done, out, report, seconds


@pytest.mark.slow
def test_the_dry_run_passes_in_time(dry_run):
    done, out, report, seconds = dry_run
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert seconds < DRY_RUN_LIMIT_S, f"dry run took {seconds:.0f} s"
    assert report is not None
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["gpu_check.log", "gpu_report.json"], files  # a device call brings back at most 8 files
    log = (out / "gpu_check.log").read_text()
    assert "===== summary =====" in log and "target throughput_vs_hf_static" in log
    assert report["card"] and report["dry_run"] is True and report["versions"]["torch"]


@pytest.mark.slow
def test_every_section_is_there_and_passed_or_skipped_with_a_reason(dry_run):
    report = dry_run[2]
    assert {"parity", "cuda_graphs", "torch_backend", "kernel_tests", "throughput_small", "throughput_large",
            "decode_small", "prefill_small", "hbm_bandwidth", "matmul_peak", "attention", "models", "moe"} <= set(SECTIONS)
    assert list(report["sections"]) == list(SECTIONS)
    for name, section in report["sections"].items():
        assert section["status"] in ("pass", "skipped"), (name, section.get("error"), section.get("details"))
        if section["status"] == "skipped":
            assert isinstance(section.get("reason"), str) and section["reason"], name
        assert isinstance(section["duration_s"], (int, float)), name
        for key, value in section["figures"].items():
            assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), (name, key, value)
    skipped = {n for n, s in report["sections"].items() if s["status"] == "skipped"}
    assert skipped == {"cuda_graphs"}, skipped  # only what truly needs CUDA
    assert "CUDA" in report["sections"]["cuda_graphs"]["reason"]


@pytest.mark.slow
def test_the_sections_measured_what_they_say(dry_run):
    sections = dry_run[2]["sections"]
    assert sections["kernel_tests"]["figures"]["passed"] > 0 and sections["kernel_tests"]["figures"]["failed"] == 0
    assert sections["parity"]["figures"]["tokens_compared"] > 0 and sections["parity"]["figures"]["failures"] == 0
    assert set(sections["parity"]["details"]["runs"]) >= {f"{a}/float32" for a in ("llama", "mistral", "qwen2", "qwen3",
                                                                                    "qwen3_moe", "gemma3")}
    assert sections["parity"]["figures"]["kernel_fallbacks"] == 0
    moe = sections["moe"]
    assert moe["figures"]["pagebatch_tok_s"] > 0 and moe["figures"]["speedup_vs_static"] > 0
    assert moe["figures"]["moe_decode_step_ms"] > 0 and moe["figures"]["moe_over_dense_decode"] > 0
    assert moe["details"]["serving_path"]["ops"]["fused_moe"] in ("cpu", "torch", "triton")  # the backend's own kernel
    assert moe["details"]["serving_path"]["fallbacks"] == []
    for which in ("small", "large"):
        tp = sections[f"throughput_{which}"]
        systems = tp["details"]["systems"]
        for name in ("pagebatch", "pagebatch_prefix", "hf_continuous", "hf_continuous_prefix"):
            assert systems[name]["status"] == "pass", (which, name, systems[name])
        assert sum(1 for n, s in systems.items() if n.startswith("hf_static_b") and s["status"] == "pass") >= 2
        assert tp["figures"]["pagebatch_tok_s"] > 0 and tp["figures"]["speedup_vs_static"] > 0
        assert sections[f"decode_{which}"]["figures"]["share_of_hbm"] > 0
        assert sections[f"prefill_{which}"]["figures"]["share_of_matmul_peak"] > 0
    assert sections["attention"]["figures"]["worst_ratio"] > 0


@pytest.mark.slow
def test_the_targets_are_evaluated(dry_run):
    targets = dry_run[2]["targets"]
    assert set(targets) == {"throughput_vs_hf_static", "throughput_vs_hf_continuous", "decode_batch1_bandwidth_share",
                            "paged_attention_vs_sdpa", "moe_decode_vs_dense"}
    for name, target in targets.items():
        assert isinstance(target["value"], (int, float)) and isinstance(target["met"], bool), (name, target)
        assert target["met"] == (target["value"] >= target["threshold"] if target["comparison"] == ">=" else target["value"] <= target["threshold"])


def test_greedy_comparison_tolerates_only_near_ties():
    gaps = {(0, 1): 0.1, (1, 0): 0.5}
    result = compare([[1, 2, 3], [4, 5], [6]], [[1, 9, 3], [7, 5], [6, 6]], lambda i, s: gaps[i, s], tol=0.25)
    assert result["tokens_compared"] == 2 + 1 + 1
    assert len(result["near_ties"]) == 1 and result["near_ties"][0].startswith("seq 0 step 1")
    assert [f.split(":")[0] for f in result["failures"]] == ["seq 1 step 0", "seq 2"]


def test_pytest_summaries_and_shards():
    assert parse_summary("....\n3 failed, 60 passed, 8 skipped, 1 error in 12.3s\n") == {"failed": 3, "passed": 60, "skipped": 8, "errors": 1}
    assert parse_summary("no summary here") == {}
    assert shard(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert shard(["a"], 6) == [["a"]]
