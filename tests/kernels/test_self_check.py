"""The start-up self-check of the compiled kernels, on CPU through the Triton interpreter: a kernel broken on purpose
(a wrong result, or an exception as a failed compile would raise) is replaced by its torch reference for the
process, with one warning naming it; the engine then serves the references' tokens and reports the path it took."""
from __future__ import annotations

import logging

import pytest

from pagebatch.kernels import reference, triton_ops

SELF_CHECK_LOGGER = "pagebatch.kernels.self_check"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pagebatch.engine.make_model import make_checkpoint

    root = tmp_path_factory.mktemp("self-check")
    return {
        "llama": str(make_checkpoint(root / "llama", arch="llama", hidden_size=64, num_layers=1, num_heads=4,
                                     num_kv_heads=2)),
        "moe": str(make_checkpoint(root / "moe", arch="qwen3_moe", hidden_size=64, num_layers=1, num_heads=4,
                                   num_kv_heads=2, num_experts=4, intermediate_size=32)),
    }


def generate(path: str, kernels: str, device: str):
    from pagebatch.engine.llm import LLM
    from pagebatch.engine.sampling_params import SamplingParams

    llm = LLM(path, dtype="float32", device=device, kernels=kernels, block_size=8)
    prompts = ["a prompt long enough to span a few blocks of the cache", "short"]
    return llm, [o.token_ids for o in llm.generate(prompts, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))]


def warnings_about(caplog: pytest.LogCaptureFixture, op: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SELF_CHECK_LOGGER and f"kernel {op} " in r.getMessage()]


def test_passing_kernels_serve_unchanged(tiny, device: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=SELF_CHECK_LOGGER):
        llm, _ = generate(tiny["moe"], "triton", device)
    assert llm.engine.model.ops is triton_ops  # nothing replaced: the backend object itself
    path = llm.engine.serving_path()
    assert path.fallbacks == [] and set(path.ops.values()) == {"triton"}
    assert {o.op for o in path.self_check} == set(llm.engine.model.required_ops()) >= {"fused_moe", "paged_attention"}
    assert all(o.passed for o in path.self_check)
    assert not [r for r in caplog.records if r.name == SELF_CHECK_LOGGER]


def test_a_wrong_kernel_is_replaced_by_its_reference(tiny, device: str, monkeypatch, caplog) -> None:
    """rms_norm made to return a wrong result: the check catches it, the reference serves, tokens stay right."""
    want = generate(tiny["llama"], "torch", device)[1]
    correct = triton_ops.rms_norm

    def wrong_rms_norm(x, weight, eps, residual=None):
        out = correct(x, weight, eps, residual)
        return out * 1.5 if residual is None else (out[0] * 1.5, out[1])

    monkeypatch.setattr(triton_ops, "rms_norm", wrong_rms_norm)
    with caplog.at_level(logging.WARNING, logger=SELF_CHECK_LOGGER):
        llm, got = generate(tiny["llama"], "triton", device)
    ops = llm.engine.model.ops
    assert ops.rms_norm is reference.rms_norm
    assert ops.paged_attention is triton_ops.paged_attention and ops.write_kv is triton_ops.write_kv
    assert len(warnings_about(caplog, "rms_norm")) == 1
    assert "differs from the reference" in warnings_about(caplog, "rms_norm")[0]
    path = llm.engine.serving_path()
    assert path.ops["rms_norm"] == "torch-fallback" and path.ops["paged_attention"] == "triton"
    assert path.fallbacks == ["rms_norm"]
    assert path.as_dict()["fallbacks"] == ["rms_norm"]
    assert llm.engine.model.kernels.supports_cuda_graphs  # the reference RMSNorm is capturable
    assert got == want


def test_a_kernel_that_raises_is_replaced(tiny, device: str, monkeypatch, caplog) -> None:
    """fused_moe raising as a failed compile would: replaced; attention, whose reference reads host values per
    step, still serves from Triton, so CUDA graphs stay possible only while no such reference is in use."""
    want = generate(tiny["moe"], "torch", device)[1]

    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly failed (simulated)")

    monkeypatch.setattr(triton_ops, "fused_moe", broken)
    with caplog.at_level(logging.WARNING, logger=SELF_CHECK_LOGGER):
        llm, got = generate(tiny["moe"], "triton", device)
    assert llm.engine.model.ops.fused_moe is reference.fused_moe
    [message] = warnings_about(caplog, "fused_moe")
    assert "PTX assembly failed" in message
    outcome = next(o for o in llm.engine.serving_path().self_check if o.op == "fused_moe")
    assert not outcome.passed and "RuntimeError" in outcome.detail
    assert not llm.engine.model.kernels.supports_cuda_graphs  # the reference MoE syncs with the host
    assert got == want


def test_broken_attention_drops_cuda_graph_support(tiny, device: str, monkeypatch) -> None:
    """The reference attention plans each batch on the host, so with it serving no decode step is captured."""
    from pagebatch.engine.llm import LLM

    correct = triton_ops.paged_attention
    monkeypatch.setattr(triton_ops, "paged_attention", lambda *a, **k: correct(*a, **k) + 1.0)
    llm = LLM(tiny["llama"], dtype="float32", device=device, kernels="triton", block_size=8)
    assert llm.engine.model.ops.paged_attention is reference.paged_attention
    assert not llm.engine.model.kernels.supports_cuda_graphs


def test_self_check_can_be_turned_off(tiny, device: str, monkeypatch) -> None:
    from pagebatch.engine.llm import LLM

    monkeypatch.setattr(triton_ops, "write_kv", lambda *a, **k: None)
    llm = LLM(tiny["llama"], dtype="float32", device=device, kernels="triton", kernel_self_check=False)
    assert llm.engine.model.ops.write_kv is triton_ops.write_kv
    assert llm.engine.serving_path().self_check == []
