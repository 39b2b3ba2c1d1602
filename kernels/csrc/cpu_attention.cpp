// Torch binding of the CPU paged decode-attention kernel (cpu_attention_kernel.h) as the custom op
// torch.ops.pagebatch_cpu.decode_attention. Registered with TORCH_LIBRARY rather than pybind11 so the
// JIT build skips torch/extension.h (a few seconds instead of ~35 s); kernels/cpu_attention.py builds
// and loads it.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu_attention_kernel.h"

namespace {

// out[row_idx[i], h, :] = softmax(scale * q[row_idx[i], h] . K_i^T) V_i for every decode i, where
// K_i / V_i are the first ctx_lens[i] tokens of the blocks block_tables[seq_idx[i], :] (with window > 0, only
// the last `window` of them).
void decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& out,
                      const at::Tensor& block_tables, const at::Tensor& seq_idx, const at::Tensor& row_idx,
                      const at::Tensor& ctx_lens, double scale, int64_t min_split_len, int64_t window) {
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu() && v_cache.device().is_cpu() && out.device().is_cpu(),
              "decode_attention is a CPU kernel");
  TORCH_CHECK(q.dim() == 3 && out.dim() == 3 && k_cache.dim() == 4 && v_cache.dim() == 4,
              "q/out must be [T, H, D] and the caches [num_blocks, block_size, Hkv, D]");
  TORCH_CHECK(q.sizes() == out.sizes(), "q and out must have the same shape");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes() && k_cache.strides() == v_cache.strides(),
              "k_cache and v_cache must have the same shape and strides");
  TORCH_CHECK(q.stride(2) == 1 && out.stride(2) == 1 && k_cache.stride(3) == 1, "head_dim must be contiguous");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(out.scalar_type() == dtype && k_cache.scalar_type() == dtype && v_cache.scalar_type() == dtype,
              "q, out and the caches must have one dtype");
  TORCH_CHECK(q.size(2) == k_cache.size(3), "head_dim of q and the caches differ");
  TORCH_CHECK(q.size(1) % k_cache.size(2) == 0, "num_heads must be a multiple of num_kv_heads");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.dim() == 2 && block_tables.stride(1) == 1,
              "block_tables: 2-D int32 with contiguous rows");
  TORCH_CHECK(ctx_lens.scalar_type() == at::kInt && ctx_lens.is_contiguous(), "ctx_lens: contiguous int32");
  TORCH_CHECK(seq_idx.scalar_type() == at::kLong && seq_idx.is_contiguous(), "seq_idx: contiguous int64");
  TORCH_CHECK(row_idx.scalar_type() == at::kLong && row_idx.is_contiguous(), "row_idx: contiguous int64");
  const int64_t n = seq_idx.numel();
  TORCH_CHECK(row_idx.numel() == n && ctx_lens.numel() == n, "seq_idx, row_idx and ctx_lens differ in length");
  int code;
  if (dtype == at::kFloat) {
    code = 0;
  } else if (dtype == at::kBFloat16) {
    code = 1;
  } else if (dtype == at::kHalf) {
    code = 2;
  } else {
    TORCH_CHECK(false, "decode_attention supports float32, bfloat16 and float16, got ", dtype);
  }
  const int32_t* ctx = ctx_lens.data_ptr<int32_t>();
  const int64_t* seqs = seq_idx.data_ptr<int64_t>();
  const int64_t* rows = row_idx.data_ptr<int64_t>();
  const int64_t block_size = k_cache.size(1), max_blocks = block_tables.size(1);
  for (int64_t i = 0; i < n; ++i) {  // cheap bounds checks: a bad index must not read or write out of bounds
    TORCH_CHECK(ctx[i] >= 1 && (ctx[i] + block_size - 1) / block_size <= max_blocks, "context length out of range");
    TORCH_CHECK(seqs[i] >= 0 && seqs[i] < block_tables.size(0), "seq_idx out of range");
    TORCH_CHECK(rows[i] >= 0 && rows[i] < q.size(0), "row_idx out of range");
    const int32_t* table = block_tables.data_ptr<int32_t>() + seqs[i] * block_tables.stride(0);
    for (int64_t b = 0; b < (ctx[i] + block_size - 1) / block_size; ++b) {
      TORCH_CHECK(table[b] >= 0 && table[b] < k_cache.size(0), "block table entry out of range");
    }
  }
  pagebatch::DecodeParams P;
  P.q = q.data_ptr();
  P.out = out.data_ptr();
  P.k = k_cache.data_ptr();
  P.v = v_cache.data_ptr();
  P.q_row = q.stride(0);
  P.q_head = q.stride(1);
  P.o_row = out.stride(0);
  P.o_head = out.stride(1);
  P.block_stride = k_cache.stride(0);
  P.token_stride = k_cache.stride(1);
  P.head_stride = k_cache.stride(2);
  P.tables = block_tables.data_ptr<int32_t>();
  P.table_row = block_tables.stride(0);
  P.seq_idx = seqs;
  P.row_idx = rows;
  P.ctx = ctx;
  P.n = n;
  P.H = q.size(1);
  P.Hkv = k_cache.size(2);
  P.D = q.size(2);
  P.block_size = block_size;
  P.scale = static_cast<float>(scale);
  P.min_split_len = min_split_len;
  P.window = window;
  P.threads = at::get_num_threads();
  pagebatch::decode_attention(P, code);
}

}  // namespace

TORCH_LIBRARY(pagebatch_cpu, m) {
  m.def(
      "decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor(a!) out, Tensor block_tables, Tensor seq_idx, "
      "Tensor row_idx, Tensor ctx_lens, float scale, int min_split_len, int window) -> ()");
}

TORCH_LIBRARY_IMPL(pagebatch_cpu, CPU, m) { m.impl("decode_attention", &decode_attention); }
