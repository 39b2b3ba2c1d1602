"""Helpers that compare the engine with transformers' generate on the same checkpoint."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

NEAR_TIE = 1e-4


def mixed_prompts(vocab_size: int, seed: int = 0) -> list[list[int]]:
    """32 token-id prompts of 1 to 1,100 tokens; six share a 300-token prefix, two repeat a prompt whole."""
    rng = random.Random(seed)
    lengths = [1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 63, 100, 128, 129, 200, 255, 256, 400, 513, 700, 1024, 1100, 50, 9]
    prompts = [[rng.randrange(3, vocab_size) for _ in range(n)] for n in lengths]
    prefix = [rng.randrange(3, vocab_size) for _ in range(300)]
    prompts += [prefix + [rng.randrange(3, vocab_size) for _ in range(n)] for n in (1, 5, 16, 40, 77, 130)]
    prompts += [list(prompts[-1]), list(prompts[12])]
    return prompts


@dataclass
class Reference:
    tokens: list[int]
    logits: torch.Tensor  # [steps, vocab] float32


def transformers_greedy(model_dir: str, prompts: list[list[int]], max_new_tokens: int,
                        dtype: torch.dtype = torch.float32) -> list[Reference]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    refs = []
    with torch.inference_mode():
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                output_logits=True, return_dict_in_generate=True, pad_token_id=model.config.pad_token_id,
            )
            tokens = out.sequences[0, len(prompt):].tolist()
            refs.append(Reference(tokens, torch.cat(out.logits).float()))
    return refs


def compare_greedy(outputs, refs: list[Reference]) -> list[str]:
    """Fail on any divergence except at a near-tie of transformers' top two logits; returns the tolerated ones."""
    tolerated = []
    for i, (out, ref) in enumerate(zip(outputs, refs)):
        assert out.error is None, f"prompt {i}: {out.error}"
        got, want = out.token_ids, ref.tokens
        for step, (g, w) in enumerate(zip(got, want)):
            if g != w:
                top2 = ref.logits[step].topk(2).values
                gap = (top2[0] - top2[1]).item()
                assert gap < NEAR_TIE, f"prompt {i} diverges at step {step}: engine {g}, transformers {w} (top-2 gap {gap:.2e})"
                tolerated.append(f"prompt {i} step {step}: near-tie (gap {gap:.1e}), engine {g} vs transformers {w}")
                break
        else:
            assert len(got) == len(want), f"prompt {i}: engine made {len(got)} tokens, transformers {len(want)}"
    return tolerated
