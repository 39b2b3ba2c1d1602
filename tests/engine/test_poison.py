"""A poison request never touches another: hostile parameters and prompts, sent to a running EngineLoop
beside ordinary requests, end with an output of their own; the ordinary requests finish exactly as alone."""
from __future__ import annotations

import math
import random
import threading

import pytest
import torch

from pagebatch.engine.llm import LLM
from pagebatch.engine.config import EngineConfig
from pagebatch.engine.loop import EngineLoop
from pagebatch.engine.engine import LLMEngine
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.inputs import PromptProcessor
from pagebatch.engine.request import Request
from pagebatch.engine.sampler import sample
from tests.engine.pool_checks import check_invariants

MAX_MODEL_LEN = 128
CODES = {"invalid_request", "context_length_exceeded", "request_too_large", "engine_error"}
INNOCENT_PARAMS = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
INNOCENTS = [f"innocent document {i}: the review was good " * (1 + i % 3) for i in range(6)]
NAN, INF = float("nan"), float("inf")

# (SamplingParams fields, what must happen: the parameter named in the error, "ok", or "any")
HOSTILE_PARAMS = [
    (dict(top_k=2**63, temperature=0.8, seed=1), "ok"),
    (dict(top_k=-(2**63)), "top_k"),
    (dict(top_k=10**40, temperature=1.0), "ok"),
    (dict(temperature=1e-300, choices=["positive", "negative"]), "ok"),
    (dict(temperature=1e-300, choices=["positive", "negative"], seed=-(2**70)), "seed"),
    (dict(temperature=5e-324, seed=3), "ok"),
    (dict(top_p=1e-320, seed=-(2**70)), "seed"),
    (dict(top_p=1e-320, seed=5, temperature=1.0), "ok"),
    (dict(temperature=NAN), "temperature"),
    (dict(temperature=INF), "temperature"),
    (dict(temperature=-INF), "temperature"),
    (dict(temperature=2.0000001), "temperature"),
    (dict(temperature=10**400), "temperature"),
    (dict(temperature="0.5"), "temperature"),
    (dict(top_p=NAN), "top_p"),
    (dict(top_p=INF), "top_p"),
    (dict(top_p=-0.0), "top_p"),
    (dict(seed=2**63), "seed"),
    (dict(seed=-(2**63), temperature=1.0), "ok"),
    (dict(seed=2**64 + 1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(seed=True), "seed"),
    (dict(logprobs=10**9), "logprobs"),
    (dict(logprobs=-1), "logprobs"),
    (dict(logprobs=2**70), "logprobs"),
    (dict(logprobs=20, temperature=1.0, top_k=3, seed=2), "ok"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=-(2**63)), "max_tokens"),
    (dict(max_tokens=2**63), "ok"),  # capped by the context
    (dict(max_tokens=INF), "max_tokens"),
    (dict(max_tokens=None), "max_tokens"),
    (dict(stop=["a"] * 10_000), "stop"),
    (dict(stop=["x" * 1_000_000]), "stop"),
    (dict(stop=[""]), "stop"),
    (dict(stop=[None]), "stop"),
    (dict(stop=5), "stop"),
    (dict(stop="\ud800"), "ok"),
    (dict(stop=["\ud800\udfff", "e"]), "ok"),
    (dict(stop_token_ids=[10**30]), "stop_token_ids"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"),
    (dict(stop_token_ids=list(range(100_000))), "stop_token_ids"),
    (dict(stop_token_ids=None), "stop_token_ids"),
    (dict(stop_token_ids="abc"), "stop_token_ids"),
    (dict(choices=[]), "choices"),
    (dict(choices=[""]), "choices"),
    (dict(choices=["\ud800"]), "choices"),
    (dict(choices=["ok", "\udfff"]), "choices"),
    (dict(choices=["a"] * 5000), "choices"),
    (dict(choices=["x" * 1_000_000]), "choices"),
    (dict(choices=[1, 2]), "choices"),
    (dict(choices="abc"), "choices"),
    (dict(choices=["yes", "no"], temperature=1e-300, logprobs=20), "ok"),
    (dict(choices=["word " * 400, "no"], temperature=1.0, seed=4), "any"),  # a label longer than the context
    (dict(ignore_eos="yes"), "ignore_eos"),
    (dict(skip_special_tokens=None), "skip_special_tokens"),
]
HOSTILE_PROMPTS = [
    ("\ud800", "invalid_request"),
    ("a\udfffb", "invalid_request"),
    ("x" * 1_000_000, "context_length_exceeded"),
    ("", "invalid_request"),
    ([], "invalid_request"),
    ([10**30], "invalid_request"),
    ([-1], "invalid_request"),
    ([True, False], "invalid_request"),
    (list(range(10**6)), "context_length_exceeded"),
    ([{"role": "user", "content": "\ud800"}], "invalid_request"),
    ([{"role": "user", "content": "y" * 1_000_000}], "context_length_exceeded"),
    ([{"role": 5, "content": "x"}], "invalid_request"),
    ([{"role": "user"}], "invalid_request"),
    (None, "invalid_request"),
    (12.5, "invalid_request"),
    (b"bytes", "invalid_request"),
    ({"prompt": "x"}, "invalid_request"),
    (["a", "b"], "invalid_request"),
    ("\x00" * 100, None),
    ("🚀\u202e\ufeff" * 300, None),
]


@pytest.fixture(scope="module")
def config(checkpoint_dir):
    return EngineConfig(model=checkpoint_dir("llama"), dtype="float32", device="cpu", max_model_len=MAX_MODEL_LEN,
                        num_kv_blocks=256, max_num_batched_tokens=256)


@pytest.fixture(scope="module")
def alone(config):
    """Each innocent request's tokens when it runs by itself."""
    llm = LLM(config.model, dtype="float32", device="cpu", max_model_len=MAX_MODEL_LEN)
    return [llm.generate([p], INNOCENT_PARAMS)[0].token_ids for p in INNOCENTS]


def test_hostile_requests_end_alone_and_innocent_ones_finish_as_alone(config, alone):
    loop = EngineLoop(LLMEngine(config))
    hostile = [("hostile prompt", SamplingParams(**fields), want) for fields, want in HOSTILE_PARAMS]
    hostile += [(prompt, SamplingParams(temperature=0, max_tokens=4), code) for prompt, code in HOSTILE_PROMPTS]
    hostile.append(("not params", {"temperature": 0}, "params"))
    innocent_futures: dict[int, object] = {}
    hostile_futures: dict[int, object] = {}

    def feed(k: int) -> None:
        for i in range(k, len(hostile), 2):
            hostile_futures[i] = loop.submit(hostile[i][0], hostile[i][1], request_id=f"hostile-{i}")
            if i % 9 == 0 and i // 9 < len(INNOCENTS):
                j = i // 9
                innocent_futures[j] = loop.submit(INNOCENTS[j], INNOCENT_PARAMS, request_id=f"innocent-{j}")

    threads = [threading.Thread(target=feed, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for j in range(len(INNOCENTS)):
        if j not in innocent_futures:
            innocent_futures[j] = loop.submit(INNOCENTS[j], INNOCENT_PARAMS, request_id=f"innocent-{j}")
    try:
        for j, future in innocent_futures.items():
            out = future.result(timeout=120)
            assert out.finish_reason == "length", out.error
            assert out.token_ids == alone[j]
        for i, future in hostile_futures.items():
            out = future.result(timeout=120)
            want = hostile[i][2]
            assert out.finish_reason in ("stop", "length", "error")
            if out.finish_reason == "error":
                assert out.error_code in CODES and out.error and len(out.error) < 1000, out.error
            if want == "ok":
                assert out.ok, (hostile[i][1], out.error)
            elif want in CODES:
                assert out.error_code == want, (hostile[i][0][:40], out.error)
            elif want not in ("any", None):
                assert out.finish_reason == "error" and out.error_code == "invalid_request", (hostile[i][1], out)
                assert out.error.startswith(want), out.error
        assert loop.is_alive() and loop.fatal_error is None
        stats = loop.stats()
        assert stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_blocks_used == 0
        check_invariants(loop.engine.blocks, [])
    finally:
        loop.close()


def test_a_huge_prompt_is_rejected_without_tokenizing_it(config):
    engine = LLMEngine(config)
    seen: list[int] = []
    real = engine.builder.prompts.tokenizer

    class SpyBackend:  # the fast tokenizer's Rust backend, which the processor encodes with
        def encode(self, text, **kwargs):
            seen.append(len(text))
            return real.backend_tokenizer.encode(text, **kwargs)

    class Spy:
        chat_template = real.chat_template
        backend_tokenizer = SpyBackend()

    prompts = engine.builder.prompts
    engine.builder.prompts = PromptProcessor(Spy(), prompts.vocab_size, prompts.max_model_len)
    out = engine.prepare_request("word " * 200_000, SamplingParams())
    assert out.finish_reason == "error" and out.error_code == "context_length_exceeded"
    assert seen == []
    assert isinstance(engine.prepare_request("a short prompt", SamplingParams()), Request)
    assert seen == [len("a short prompt")]


def test_submit_prepares_the_request_on_the_callers_thread(config):
    loop = EngineLoop(LLMEngine(config))
    threads: list[str] = []
    real = loop.engine.builder.build

    def build(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    loop.engine.builder.build = build
    try:
        assert loop.submit("hello", SamplingParams(temperature=0, max_tokens=2)).result(timeout=30).ok
        assert threads == [threading.current_thread().name]
    finally:
        loop.close()


# -- every SamplingParams that validate() accepts can be sampled -----------------------------------------------
VALID = {
    "temperature": [0, 0.0, 1e-300, 5e-324, 1e-5, 0.7, 2, 2.0],
    "top_p": [1e-320, 5e-324, 1e-9, 0.5, 1, 1.0],
    "top_k": [-1, 0, 1, 2, 511, 512, 513, 2**31, 2**63, 2**200],
    "seed": [None, 0, -1, 2**63 - 1, -(2**63)],
    "logprobs": [None, 0, 1, 20],
    "choices": [None, ["a"], ["a", "b", "c"]],
}
INVALID = {
    "temperature": [2.5, -1e-300, NAN, INF, True, None, "1"],
    "top_p": [0, 1.0000001, NAN, -INF, None],
    "top_k": [-2, -(2**63), 1.5, None],
    "seed": [2**63, -(2**63) - 1, -(2**70), 1.0, "3"],
    "logprobs": [21, 2**63, -1, 1.0, True],
    "choices": [[], [""], ["a", 3], "ab"],
}


def test_every_accepted_parameter_set_samples_without_error():
    rng = random.Random(0)
    vocab = 512
    accepted = 0
    for case in range(2000):
        fields = {name: rng.choice(INVALID[name] if rng.random() < 0.05 else values) for name, values in VALID.items()}
        params = SamplingParams(**fields)
        try:
            params.validate(vocab)
        except ValueError as exc:
            assert str(exc).split(" ", 1)[0].strip(":") in VALID, str(exc)
            assert any(fields[name] is value for name in INVALID for value in INVALID[name]), str(exc)
            continue
        accepted += 1
        req = Request(f"r{case}", [1, 2, 3], params)
        if not params.greedy:
            req.generator = torch.Generator().manual_seed(params.seed if params.seed is not None else case)
        allowed = [[5, 9, 11]] if params.choices is not None else None
        logits = torch.randn(1, vocab) * rng.choice([1.0, 30.0, 1e4])
        (token,) = sample(logits, [req], allowed)
        assert 0 <= token.token_id < vocab
        if allowed is not None:
            assert token.token_id in allowed[0]
        if params.logprobs is not None:
            lp, top = token.logprobs
            assert math.isfinite(lp) and len(top) == params.logprobs
    assert accepted > 1000
