"""Embeddings (PoolingParams) equal transformers' pooled final hidden states, for every family and pooling."""
import pytest
import torch

from pagebatch.engine.llm import LLM
from pagebatch.engine.config import EngineConfig
from pagebatch.engine.loop import EngineLoop
from pagebatch.engine.engine import LLMEngine
from pagebatch.engine.pooling import PoolingParams
from pagebatch.engine.sampling_params import SamplingParams
from tests.engine.embedding_helpers import (
    EMBEDDING_VARIANTS, cosine, make_embedding_checkpoint, token_prompts, transformers_embeddings,
)

MIN_COSINE = 0.9999
LENGTHS = [1, 2, 7, 16, 17, 50, 130]


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedding-checkpoints")
    made: dict[str, str] = {}

    def get(variant: str) -> str:
        if variant not in made:
            made[variant] = make_embedding_checkpoint(root, variant)
        return made[variant]

    return get


def engine_options(**extra):
    return dict(dtype="float32", device="cpu", num_kv_blocks=256, **extra)


def assert_parity(outs, refs, dims=None):
    for i, (out, ref) in enumerate(zip(outs, refs)):
        assert out.ok and out.error is None, f"prompt {i}: {out.error}"
        assert out.token_ids == [] and out.text == ""
        assert len(out.embedding) == (dims or ref.shape[0])
        assert cosine(out.embedding, ref[: len(out.embedding)]) >= MIN_COSINE, f"prompt {i}"


@pytest.mark.parametrize("variant", list(EMBEDDING_VARIANTS))
def test_base_model_embeddings_match_transformers(embedding_dir, variant, one_thread):
    path = embedding_dir(variant)
    spec = EMBEDDING_VARIANTS[variant]
    method, normalize = spec.get("pooling") or "last", spec.get("normalize", True)
    prompts = token_prompts(len(LENGTHS), LENGTHS)
    llm = LLM(path, **engine_options())
    outs = llm.embed(prompts)
    refs = transformers_embeddings(path, prompts, method, normalize)
    assert_parity(outs, refs)
    for out, ref in zip(outs, refs):
        if normalize:
            assert abs(sum(v * v for v in out.embedding) - 1) < 1e-5
        else:  # not normalized: the raw vector itself, not only its direction
            assert torch.allclose(torch.tensor(out.embedding), ref, rtol=1e-4, atol=1e-4)
    assert llm.engine.blocks.num_free_blocks == llm.engine.num_blocks


@pytest.mark.parametrize("variant", ["llama", "qwen2", "qwen3"])
def test_causal_checkpoints_embed_by_their_last_token(checkpoint_dir, variant, one_thread):
    path = checkpoint_dir(variant)
    prompts = token_prompts(len(LENGTHS), LENGTHS, seed=1)
    llm = LLM(path, **engine_options())
    assert_parity(llm.embed(prompts), transformers_embeddings(path, prompts, "last"))
    mean = llm.embed(prompts, PoolingParams(pooling="mean"))  # a request may ask for another pooling
    assert_parity(mean, transformers_embeddings(path, prompts, "mean"))
    assert llm.generate(["hello"], SamplingParams(max_tokens=2))[0].ok  # and it still generates


def test_text_inputs_are_tokenized_as_transformers_does(embedding_dir, one_thread):
    path = embedding_dir("qwen3-embed")
    llm = LLM(path, **engine_options())
    texts = ["the review was good", "café naïve 東京 😀", "price"]
    ids = [llm.tokenizer(t)["input_ids"] for t in texts]
    outs = llm.embed(texts)
    assert [o.prompt_token_ids for o in outs] == ids
    assert_parity(outs, transformers_embeddings(path, ids, "mean"))


def test_matryoshka_dimensions_truncate_then_normalize(embedding_dir, one_thread):
    llm = LLM(embedding_dir("qwen3-embed"), **engine_options())
    full, short = llm.embed(["the batch model"] * 2, [PoolingParams(), PoolingParams(dimensions=16)])
    want = torch.nn.functional.normalize(torch.tensor(llm.embed("the batch model", PoolingParams(normalize=False))[0]
                                                      .embedding[:16]), dim=0)
    assert len(full.embedding) == 64 and len(short.embedding) == 16
    assert torch.allclose(torch.tensor(short.embedding), want, atol=1e-6)
    bad = llm.embed(["x"] * 3, [PoolingParams(dimensions=20), PoolingParams(dimensions=0),
                                PoolingParams(pooling="max")])
    assert [o.error_code for o in bad] == ["invalid_request"] * 3
    assert bad[0].error.startswith("dimensions must be one of [16, 32, 64]")
    assert bad[1].error.startswith("dimensions must be an integer") and bad[2].error.startswith("pooling must be")


def test_dimensions_need_a_matryoshka_model(checkpoint_dir):
    llm = LLM(checkpoint_dir("llama"), **engine_options())
    out = llm.embed("hello", PoolingParams(dimensions=8))[0]
    assert out.finish_reason == "error" and out.error.startswith("dimensions is not supported by this model")


def test_an_embedding_only_model_refuses_generation(embedding_dir):
    llm = LLM(embedding_dir("llama-embed"), **engine_options())
    assert llm.engine.model.lm_head is None
    out = llm.generate(["hello"], SamplingParams(max_tokens=4))[0]
    assert out.finish_reason == "error" and out.error_code == "invalid_request"
    assert "serves embeddings only" in out.error
    assert llm.embed("hello")[0].ok


def test_an_embedding_may_fill_the_whole_context(checkpoint_dir):
    llm = LLM(checkpoint_dir("llama"), **engine_options(max_model_len=64))
    full, over, empty = llm.embed([[5] * 64, [5] * 65, []])
    assert full.ok and full.num_prompt_tokens == 64  # no room is left for a generated token
    assert over.error_code == "context_length_exceeded" and "65 tokens" in over.error
    assert empty.finish_reason == "error" and "empty" in empty.error
    assert llm.generate([[5] * 64])[0].error_code == "context_length_exceeded"  # generation must leave room


def test_unservable_pooling_descriptions_reject_embeddings_only(embedding_dir, tmp_path):
    import json
    import shutil

    path = shutil.copytree(embedding_dir("qwen2-embed"), tmp_path / "m")
    config = json.loads((path / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_lasttoken=False, pooling_mode_max_tokens=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    out = LLM(str(path), **engine_options()).embed("hello")[0]
    assert out.finish_reason == "error" and "pooling_mode_max_tokens" in out.error


def test_the_loop_serves_embeddings_and_generation_together(checkpoint_dir, one_thread):
    path = checkpoint_dir("llama")
    loop = EngineLoop(LLMEngine(EngineConfig(model=path, **engine_options())))
    try:
        texts = [f"document {i}: the review was good" for i in range(6)]
        embedded = [loop.submit(t, PoolingParams(), request_id=f"e{i}") for i, t in enumerate(texts)]
        generated = [loop.submit(t, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)) for t in texts]
        vectors = [f.result(timeout=60) for f in embedded]
        assert all(g.result(timeout=60).ok for g in generated)
        alone = LLM(path, **engine_options()).embed(texts)
        for got, want in zip(vectors, alone):
            assert got.metrics.time_to_first_token is not None and got.metrics.total_time is not None
            assert cosine(got.embedding, want.embedding) >= 0.999999
        assert loop.stats().kv_blocks_used == 0
    finally:
        loop.close()


def test_base_model_weights_under_a_causal_config_serve_embeddings(embedding_dir, tmp_path, one_thread):
    """A causal architecture in config.json, weights without ``model.`` and no lm_head (how some embedding
    checkpoints are published): embeddings only."""
    import json
    import shutil

    path = shutil.copytree(embedding_dir("qwen2-embed"), tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config.update(architectures=["Qwen2ForCausalLM"], tie_word_embeddings=False)
    (path / "config.json").write_text(json.dumps(config))
    llm = LLM(str(path), **engine_options())
    assert llm.engine.spec.architecture == "Qwen2ForCausalLM" and llm.engine.model.lm_head is None
    prompts = token_prompts(3, LENGTHS, seed=2)
    assert_parity(llm.embed(prompts), transformers_embeddings(embedding_dir("qwen2-embed"), prompts, "last"))
    assert "serves embeddings only" in llm.generate(["hello"])[0].error
