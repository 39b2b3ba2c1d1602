"""Writes a checkpoint directory as a GGUF file the way llama.cpp's converter lays one out, for the families whose
GGUF files transformers reads and this engine serves with experts (Qwen3-MoE): metadata, a GPT-2 style BPE
tokenizer, and the tensors under llama.cpp's names, experts stacked per layer (ffn_{gate,up,down}_exps)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

_ATTENTION = {
    "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k", "self_attn.v_proj.weight": "attn_v",
    "self_attn.o_proj.weight": "attn_output", "self_attn.q_norm.weight": "attn_q_norm",
    "self_attn.k_norm.weight": "attn_k_norm", "input_layernorm.weight": "attn_norm",
    "post_attention_layernorm.weight": "ffn_norm", "mlp.gate.weight": "ffn_gate_inp",
}


def write_qwen3_moe_gguf(src: Path, out: Path) -> Path:
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    cfg = model.config
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}  # experts fused, as transformers holds them
    w = gguf.GGUFWriter(str(out), "qwen3moe")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_expert_count(cfg.num_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    _tokenizer(w, src, AutoTokenizer.from_pretrained(str(src)))
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", state["model.norm.weight"])
    w.add_tensor("output.weight", state["lm_head.weight"])
    inter = cfg.moe_intermediate_size
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        for name, gguf_name in _ATTENTION.items():
            w.add_tensor(f"blk.{layer}.{gguf_name}.weight", state[p + name])
        gate_up = state[p + "mlp.experts.gate_up_proj"]
        w.add_tensor(f"blk.{layer}.ffn_gate_exps.weight", np.ascontiguousarray(gate_up[:, :inter]))
        w.add_tensor(f"blk.{layer}.ffn_up_exps.weight", np.ascontiguousarray(gate_up[:, inter:]))
        w.add_tensor(f"blk.{layer}.ffn_down_exps.weight", state[p + "mlp.experts.down_proj"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _tokenizer(w, src: Path, tokenizer) -> None:
    import gguf

    data = json.loads((src / "tokenizer.json").read_text())
    tokens = [""] * len(data["model"]["vocab"])
    for token, i in data["model"]["vocab"].items():
        tokens[i] = token
    special = {t["id"]: t["content"] for t in data["added_tokens"]}
    for i, token in special.items():
        tokens[i] = token
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_chat_template(tokenizer.chat_template)
