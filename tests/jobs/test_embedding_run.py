"""`pagebatch run` on /v1/embeddings lines of mixed-length inputs: the vectors read back from output.jsonl equal
transformers' final hidden states with the same pooling (cosine >= 0.9999 in float32). The path is the embeddings
benchmark's own (jobs/bench/embeddings.py: its line writer, run_local in this process, its reader), with
transformers standing in for sentence-transformers, which CI does not install."""
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from pagebatch.jobs.bench.embeddings import embedding_texts, read_embedding_results, write_embedding_lines
from pagebatch.jobs.commands.local_run import run_local
from pagebatch.jobs.engine_host import EngineOptions
from pagebatch.jobs.settings import get_settings
from tests.engine.embedding_helpers import cosine, make_embedding_checkpoint, token_prompts, transformers_embeddings

MIN_COSINE = 0.9999
LENGTHS = [1, 3, 9, 16, 17, 31, 64, 130]
TEXTS = ["the review was good", "price", "delivery was slow and the box arrived damaged, so I sent it back"]


@pytest.mark.parametrize("variant, method", [(None, "last"), ("mistral-embed", "mean")])
def test_run_vectors_equal_transformers_pooled_states(tmp_path, tiny_model, variant, method, one_thread):
    path = str(tiny_model) if variant is None else make_embedding_checkpoint(tmp_path, variant)
    ids = token_prompts(37, LENGTHS, seed=3) + [AutoTokenizer.from_pretrained(path)(t)["input_ids"] for t in TEXTS]
    inputs = token_prompts(37, LENGTHS, seed=3) + TEXTS  # token ids and texts, mixed in one file
    lines = write_embedding_lines(tmp_path / "in.jsonl", Path(path).name, inputs, per_line=6)  # the last line short
    # a small step budget: long inputs are prefilled in chunks, beside other inputs, and pooled across them
    options = EngineOptions(dtype="float32", device="cpu", num_kv_blocks=256, max_num_batched_tokens=96)
    report = run_local(get_settings(), tmp_path / "in.jsonl", path, tmp_path / "out", options=options,
                       show_progress=False)
    assert report.batch.status == "completed" and report.batch.request_counts.completed == lines == 7
    vectors = read_embedding_results(tmp_path / "out", lines)
    refs = transformers_embeddings(path, ids, method)
    assert vectors.shape == (len(ids), refs[0].shape[0])
    for i, (got, want) in enumerate(zip(vectors, refs)):
        assert cosine(got, want) >= MIN_COSINE, f"input {i} ({len(ids[i])} tokens)"
        assert abs(got.norm().item() - 1) < 1e-5  # normalized, as the checkpoint's description says


def test_a_failed_line_stops_the_benchmark_reading_results(tmp_path, tiny_model, one_thread):
    lines = write_embedding_lines(tmp_path / "in.jsonl", tiny_model.name, [[5, 6], [10**6]], per_line=1)
    options = EngineOptions(dtype="float32", device="cpu", num_kv_blocks=64)
    run_local(get_settings(), tmp_path / "in.jsonl", str(tiny_model), tmp_path / "out", options=options,
              show_progress=False)
    with pytest.raises(RuntimeError, match="failed embedding lines"):
        read_embedding_results(tmp_path / "out", lines)


def test_benchmark_texts_are_deterministic_mixed_and_start_apart(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    texts = embedding_texts(tokenizer, 300, seed=1, min_tokens=5, max_tokens=60)
    assert texts == embedding_texts(tokenizer, 300, seed=1, min_tokens=5, max_tokens=60)
    assert texts != embedding_texts(tokenizer, 300, seed=2, min_tokens=5, max_tokens=60)
    counts = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert all(1 <= c <= 62 for c in counts), (min(counts), max(counts))  # a cut re-tokenizes within a token or two
    assert min(counts) <= 8 and max(counts) >= 50  # mixed: log-uniform over the range
    assert len(set(texts)) == len(texts)
    assert len({tuple(t.split()[:4]) for t in texts}) >= 0.95 * len(texts)  # each from its own starting word
