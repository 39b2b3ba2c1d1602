"""The labeling workload (`pagebatch bench engine --workload labeling`): its rows, its label constraints in the
three systems, and a small run of SmolLM2 through `pagebatch run` (in-process), as the benchmark runs it."""
from __future__ import annotations

import json

from pagebatch.engine.choices import ChoiceState, ChoiceTrie
from pagebatch.jobs.bench.labeling import (
    LabelTrie, gbnf, labeling_workload, pagebatch_labeling_run, resolve_dtype, write_batch_file,
)
from pagebatch.jobs.bench.labeling_data import LABELS, doc_sentences

ROWS = 40


def test_rows_are_distinct_sentences_chosen_by_the_seed():
    rows = doc_sentences(2000, seed=0)
    assert len(set(rows)) == 2000 and rows == doc_sentences(2000, seed=0) and rows != doc_sentences(2000, seed=1)
    assert all(8 <= len(r.split()) <= 40 for r in rows)


def test_transformers_label_trie_allows_what_the_engine_allows():
    labels = [[5, 6], [5, 7, 8], [9], [5, 6, 1]]  # "5 6" is a prefix of "5 6 1": it closes with the end token
    engine_trie, ours = ChoiceTrie(labels), LabelTrie(labels, eos=2)
    for path in ([], [5], [5, 6], [5, 7], [9]):
        state = ChoiceState(engine_trie, end_token=2)
        for token in path:
            state.advance(token)
        assert sorted(ours.allowed(tuple(path))) == sorted(state.allowed()), path


def test_gbnf_names_the_label_tokens():
    assert gbnf([[30101, 951], [1824]]) == "root ::= <[30101]> <[951]> | <[1824]>"


def test_a_small_labeling_run_serves_the_instruction_from_the_cache(smollm2_dir, tmp_path):
    w = labeling_workload(str(smollm2_dir), ROWS, seed=0)
    assert w.instruction_tokens > 1000
    batch = tmp_path / "labeling.jsonl"
    write_batch_file(batch, w)
    line = json.loads(batch.read_text().splitlines()[0])
    assert line["body"]["structured_outputs"] == {"choice": LABELS} and line["body"]["temperature"] == 0
    run = pagebatch_labeling_run(w, batch, tmp_path, resolve_dtype("auto"), 0)
    assert len(run.labels) == ROWS and set(run.labels) <= set(LABELS)
    assert run.prompt_tokens == sum(map(len, w.prompts))
    assert run.instruction_cached >= 0.95 * w.instruction_tokens * ROWS
