"""bfloat16: what dtype='auto' picks, and how closely the engine in bf16 tracks transformers in bf16.

The tolerance. Two bf16 implementations of one model do not agree bit for bit: each rounds differently
(fused QKV and gate/up matmuls, paged attention, blocking that follows the batch), so their logits differ by a
few bf16 ulps, and greedy decoding parts where the top two logits are that close. bf16 keeps 8 significant
bits, so an ulp of a logit x is 2**(floor(log2|x|) - 7): 1/128 near 1 (the random test models), 1/8 for
logits in [16, 32) (SmolLM2). The rule, against transformers' own bf16 run, with ulps of each step's top logit:

  * greedy tokens agree until a step where transformers' top-2 logit gap is at most GAP_ULPS = 4 ulps;
    after such a divergence the rest of that sequence is not compared;
  * before it, each chosen token's logprob agrees within min(LOGPROB_ULPS = 8 ulps, LOGPROB_CAP = 0.3 nats),
  * and on average over all compared steps within MEAN_LOGPROB_ULPS = 0.35 ulps.

Measured (AVX512-BF16 EPYC, torch 2.13, 1 and 2 threads, batch 3 and 256):
  SmolLM2-135M-Instruct, 16 chat prompts x 48 tokens: 10-11/16 identical, divergences at gaps of 0-2 ulps,
  logprob differences max 0.16 nats (3.6 ulps), mean 0.021 nats (0.21 ulps); the 6 x 24 test: 4/6, 0.11, 0.18 ulps.
  Random llama/qwen2/qwen3 fixtures, 32 prompts x 10 tokens: 28-32/32 identical, divergences at 0-1 ulp,
  logprobs max 0.016 (2 ulps), mean 0.06-0.13 ulps.
So the bounds are about 2x the worst seen (the mean 1.7x). What they catch, on SmolLM2: rope_theta halved
(a logprob off by 0.32 nats) or doubled (mean 0.40 ulps); not a 10x rms_norm eps (mean 0.28 ulps), which is
within bf16 noise and is left to the float32 parity suite, the exact check (tests/engine/test_parity.py).
These runs use kernels="torch", whose attention rounds as transformers' bf16 SDPA does; the C++ CPU kernel
(kernels="cpu", what "auto" picks on CPU) accumulates attention in fp32 over the bf16 cache and rounds differently, so its
mean differs from transformers' bf16 by 0.37-0.50 ulps on the random fixtures: it is checked against the
reference in tests/kernels/test_cpu_attention.py (bf16 within 2e-2) and in float32 against transformers in
tests/engine/test_cpu_kernels.py.
For scale, transformers' bf16 run itself parts from its float32 run on 6/16 of the SmolLM2 prompts (at fp32
gaps up to 0.17), as often as the engine's bf16 run does: bf16 greedy text is a different, equally fluent text.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine import dtypes
from pagebatch.engine.dtypes import cpu_has_native_bf16, resolve_dtype
from tests.engine.parity import Reference, mixed_prompts, transformers_greedy

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "What is 12 times 7?",
    "Name three primary colors.",
    "Why is the sky blue?",
]
GAP_ULPS = 4
LOGPROB_ULPS = 8
LOGPROB_CAP = 0.3
MEAN_LOGPROB_ULPS = 0.35


def bf16_ulp(x: float) -> float:
    return 2.0 ** (math.floor(math.log2(max(abs(x), 2.0**-126))) - 7)


def chat_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def transformers_greedy_bf16(model_dir: str, prompts: list[list[int]], max_new_tokens: int) -> list[Reference]:
    return transformers_greedy(model_dir, prompts, max_new_tokens, dtype=torch.bfloat16)


def compare_bf16(outputs, refs: list[Reference]) -> dict:
    """Assert the rule in the module docstring; returns what was seen, for the failure message and the log."""
    seen = {"identical": 0, "divergences": [], "max_logprob_diff": 0.0, "mean_logprob_diff": 0.0}
    diffs, diff_ulps = [], []
    for i, (out, ref) in enumerate(zip(outputs, refs)):
        assert out.error is None, f"prompt {i}: {out.error}"
        logprobs = torch.log_softmax(ref.logits, dim=-1)
        for step, (got, want) in enumerate(zip(out.token_ids, ref.tokens)):
            top2 = ref.logits[step].topk(2).values
            ulp = bf16_ulp(top2[0].item())
            if got != want:
                gap = (top2[0] - top2[1]).item()
                assert gap <= GAP_ULPS * ulp, (
                    f"prompt {i} diverges at step {step}: engine {got}, transformers {want}, "
                    f"transformers' top-2 gap {gap:.4f} = {gap / ulp:.1f} bf16 ulps > {GAP_ULPS}")
                seen["divergences"].append((i, step, round(gap / ulp, 2)))
                break
            diff = abs(out.logprobs[step].logprob - logprobs[step, got].item())
            bound = min(LOGPROB_ULPS * ulp, LOGPROB_CAP)
            assert diff <= bound, f"prompt {i} step {step}: logprob differs by {diff:.4f} > {bound:.4f}"
            diffs.append(diff)
            diff_ulps.append(diff / ulp)
        else:
            assert len(out.token_ids) == len(ref.tokens), f"prompt {i}: engine made {len(out.token_ids)} tokens, transformers {len(ref.tokens)}"
            seen["identical"] += 1
    seen["max_logprob_diff"], seen["mean_logprob_diff"] = max(diffs), sum(diffs) / len(diffs)
    seen["mean_logprob_diff_ulps"] = sum(diff_ulps) / len(diff_ulps)
    assert seen["mean_logprob_diff_ulps"] <= MEAN_LOGPROB_ULPS, seen
    return seen


# -- what 'auto' means -------------------------------------------------------------------------------------
def test_explicit_dtype_is_kept():
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        assert resolve_dtype(name, "bfloat16", torch.device("cpu")) == dtype
        assert resolve_dtype(name, "float32", torch.device("cuda")) == dtype


def test_auto_on_cpu_follows_native_bf16(monkeypatch):
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(dtypes, "cpu_has_native_bf16", lambda native=native: native)
        for checkpoint in ("float32", "bfloat16", "float16", None):
            assert resolve_dtype("auto", checkpoint, torch.device("cpu")) == want


def test_explicit_bf16_is_flagged_only_where_the_cpu_emulates_it(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(dtypes, "cpu_has_native_bf16", lambda native=native: native)
        assert dtypes.bf16_emulated(torch.bfloat16, cpu) is not native
        assert not dtypes.bf16_emulated(torch.float32, cpu)
        assert not dtypes.bf16_emulated(torch.bfloat16, cuda)


def test_auto_on_gpu_keeps_the_checkpoints_dtype():
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", "bfloat16", cuda) == torch.bfloat16
    assert resolve_dtype("auto", "float16", cuda) == torch.float16
    assert resolve_dtype("auto", "float32", cuda) == torch.float32
    assert resolve_dtype("auto", None, cuda) == torch.float32
    assert resolve_dtype("auto", "float8_e4m3fn", cuda) == torch.float32


def test_native_bf16_detection(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert "avx512_bf16" in dtypes._cpuinfo_flags(cpuinfo) and dtypes._cpuinfo_flags(tmp_path / "absent") == set()
    for caps, want in (({"avx512_bf16": True}, True), ({"amx_bf16": True}, True), ({"avx512_f": True}, False)):
        dtypes.cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps, raising=False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
        assert cpu_has_native_bf16() is want
    dtypes.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert cpu_has_native_bf16() is False
    monkeypatch.undo()
    dtypes.cpu_has_native_bf16.cache_clear()


def test_this_machines_answer_matches_its_cpuinfo():
    if not Path("/proc/cpuinfo").is_file() or torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX"):
        pytest.skip("no /proc/cpuinfo to check against")
    flags = dtypes._cpuinfo_flags()
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_engine_default_dtype_on_cpu(checkpoint_dir):
    llm = LLM(checkpoint_dir("llama"), device="cpu", num_kv_blocks=8)
    assert llm.engine.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)


# -- the tolerance ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["llama", "qwen3"])
def test_bf16_tracks_transformers_bf16_random_models(checkpoint_dir, variant, one_thread):
    path = checkpoint_dir(variant)
    prompts = mixed_prompts(512)[:16]
    refs = transformers_greedy_bf16(path, prompts, 10)
    outs = LLM(path, dtype="bfloat16", device="cpu", kernels="torch").generate(prompts, SamplingParams(temperature=0, max_tokens=10, logprobs=1))
    seen = compare_bf16(outs, refs)
    assert seen["identical"] >= len(prompts) // 2, seen  # measured 28-32 of 32


@pytest.mark.slow
def test_bf16_tracks_transformers_bf16_smollm2(smollm2_path, smollm2_dir, one_thread):
    llm = LLM(str(smollm2_path), dtype="bfloat16", device="cpu", max_model_len=1024, kernels="torch")
    prompts = [chat_ids(llm.tokenizer, q) for q in QUESTIONS]
    refs = transformers_greedy_bf16(str(smollm2_dir), prompts, 24)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, logprobs=1))
    seen = compare_bf16(outs, refs)
    assert "Paris" in outs[0].text, outs[0].text
    assert seen["identical"] >= 2, seen
