// Mixture-of-experts MLP for CPU as the custom op torch.ops.pagebatch_cpu.expert_mlp: each expert's whole MLP
// (gate/up GEMM, gated activation, down GEMM, routing weights) on the rows routed to it, the experts spread over
// the threads. A decode batch gives each expert a dozen rows or so; split across threads one GEMM at a time, every
// small GEMM would cost a fork and a join of all threads (and on a machine whose cores other processes share, a
// thread that waits at each join), where here each thread runs whole experts and the threads meet once.
// kernels/cpu_moe.py sorts the rows by expert and scatters the result back; kernels/cpu_attention.py builds it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

namespace {

// rows [n, H]: the assignments' hidden states, grouped by expert (expert e owns rows ends[e-1]..ends[e]);
// w13 [E, 2I, H] (gate rows then up rows), w2 [E, H, I]; weights [n]: each row's routing weight.
// activation: 0 silu, 1 gelu (tanh approximation). Returns [n, H]: weight * down(act(gate) * up).
at::Tensor expert_mlp(const at::Tensor& rows, const at::Tensor& w13, const at::Tensor& w2, const at::Tensor& ends,
                      const at::Tensor& weights, int64_t activation) {
  TORCH_CHECK(rows.device().is_cpu() && w13.device().is_cpu() && w2.device().is_cpu(), "expert_mlp is a CPU kernel");
  TORCH_CHECK(rows.dim() == 2 && w13.dim() == 3 && w2.dim() == 3, "rows [n, H], w13 [E, 2I, H], w2 [E, H, I]");
  const int64_t n = rows.size(0), hidden = rows.size(1), experts = w13.size(0), inter = w2.size(2);
  TORCH_CHECK(w13.size(1) == 2 * inter && w13.size(2) == hidden && w2.size(0) == experts && w2.size(1) == hidden,
              "expert weights do not fit: w13 ", w13.sizes(), ", w2 ", w2.sizes(), ", rows ", rows.sizes());
  TORCH_CHECK(w13.scalar_type() == rows.scalar_type() && w2.scalar_type() == rows.scalar_type(),
              "rows and expert weights must share a dtype");
  TORCH_CHECK(ends.scalar_type() == at::kLong && ends.is_contiguous() && ends.numel() == experts,
              "ends: contiguous int64, one per expert");
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == n, "weights: one per row");
  TORCH_CHECK(activation == 0 || activation == 1, "activation: 0 (silu) or 1 (gelu-tanh)");
  const int64_t* end = ends.data_ptr<int64_t>();
  for (int64_t e = 0; e < experts; ++e) {  // a bad offset must not read or write out of bounds
    TORCH_CHECK(end[e] >= (e ? end[e - 1] : 0) && end[e] <= n, "ends must be non-decreasing and at most n");
  }
  TORCH_CHECK(experts == 0 || end[experts - 1] == n, "ends must cover every row");
  auto out = at::empty({n, hidden}, rows.options());
  const auto scale = weights.to(rows.scalar_type()).unsqueeze(1);
  const at::ThreadLocalState caller;  // inference mode and the like are per thread: the workers take the caller's
  at::parallel_for(0, experts, 1, [&](int64_t first, int64_t last) {
    const at::ThreadLocalStateGuard same_state(caller);
    for (int64_t e = first; e < last; ++e) {
      const int64_t lo = e ? end[e - 1] : 0, count = end[e] - lo;
      if (count == 0) continue;
      const auto h = at::mm(rows.narrow(0, lo, count), w13[e].t());  // [count, 2I]
      const auto gate = h.narrow(1, 0, inter), up = h.narrow(1, inter, inter);
      const auto act = activation == 0 ? at::silu(gate) : at::gelu(gate, "tanh");
      auto dst = out.narrow(0, lo, count);
      at::mm_out(dst, act * up, w2[e].t());
      dst.mul_(scale.narrow(0, lo, count));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pagebatch_cpu, m) {
  m.def("expert_mlp(Tensor rows, Tensor w13, Tensor w2, Tensor ends, Tensor weights, int activation) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagebatch_cpu, CPU, m) { m.impl("expert_mlp", &expert_mlp); }
