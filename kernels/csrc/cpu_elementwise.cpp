// RMSNorm (optionally with the residual added first) and neox rotary embedding for CPU, one pass over each row:
// torch.ops.pagebatch_cpu.rms_norm / add_rms_norm / rotary_neox. kernels.reference does each in 5-8 torch ops,
// every one a pass over the activations and, for a small model's step, mostly per-op overhead.
//
// Each rounds where the reference rounds: a half-precision activation is rounded to its dtype after every op the
// reference does in that dtype (the residual sum, the normalized value, its product with the weight; each
// rotary product and their sum), so the results equal the reference's but for the float32 sum of squares, which
// is added in another order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kRowsPerTask = 16;

// Loads and stores the compiler can vectorize: bfloat16 as its raw bits (rounded to nearest even, as torch rounds
// finite values), the other dtypes by static_cast.
template <typename T>
struct Io {
  using Raw = T;
  static float load(Raw v) { return static_cast<float>(v); }
  static Raw store(float v) { return static_cast<Raw>(v); }
};

template <>
struct Io<c10::BFloat16> {
  using Raw = uint16_t;
  static float load(Raw v) {
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  static Raw store(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return static_cast<Raw>(bits >> 16);
  }
};

template <typename T>
using RawOf = typename Io<T>::Raw;

template <typename T>
const RawOf<T>* raw(const at::Tensor& t) {
  return reinterpret_cast<const RawOf<T>*>(t.data_ptr<T>());
}

template <typename T>
RawOf<T>* raw_mut(at::Tensor& t) {
  return reinterpret_cast<RawOf<T>*>(t.data_ptr<T>());
}

// v rounded to T's precision, as a float
template <typename T>
inline float rounded(float v) {
  return Io<T>::load(Io<T>::store(v));
}

// A sum of squares in independent lanes: one running sum would be a chain of dependent adds the compiler
// may not reorder.
inline float sum_of_squares(const float* h, int64_t n) {
  constexpr int kLanes = 16;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += h[i + l] * h[i + l];
  float total = 0.f;
  for (; i < n; ++i) total += h[i] * h[i];
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

template <typename T>
void norm_rows(const RawOf<T>* x, RawOf<T>* sum_out, const RawOf<T>* residual, const RawOf<T>* weight,
               RawOf<T>* out, int64_t rows, int64_t dim, double eps) {
  using io = Io<T>;
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    std::vector<float> h(dim);
    for (int64_t r = begin; r < end; ++r) {
      const RawOf<T>* __restrict__ xr = x + r * dim;
      if (residual != nullptr) {
        const RawOf<T>* __restrict__ rr = residual + r * dim;
        RawOf<T>* __restrict__ sr = sum_out + r * dim;
        for (int64_t i = 0; i < dim; ++i) {
          const RawOf<T> summed = io::store(io::load(xr[i]) + io::load(rr[i]));
          sr[i] = summed;
          h[i] = io::load(summed);
        }
      } else {
        for (int64_t i = 0; i < dim; ++i) h[i] = io::load(xr[i]);
      }
      const float squares = sum_of_squares(h.data(), dim);
      const float scale = 1.f / std::sqrt(squares / static_cast<float>(dim) + static_cast<float>(eps));
      RawOf<T>* __restrict__ o = out + r * dim;
      for (int64_t i = 0; i < dim; ++i) o[i] = io::store(io::load(weight[i]) * rounded<T>(h[i] * scale));
    }
  });
}

void check_norm(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "rms_norm is a CPU kernel");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "x and weight must have one dtype");
  TORCH_CHECK(weight.dim() == 1 && x.size(-1) == weight.size(0), "weight must be [dim] for x [..., dim]");
}

at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& weight_in, double eps) {
  check_norm(x_in, weight_in);
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t dim = x.size(-1), rows = dim == 0 ? 0 : x.numel() / dim;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    norm_rows<scalar_t>(raw<scalar_t>(x), nullptr, nullptr, raw<scalar_t>(weight), raw_mut<scalar_t>(out), rows,
                        dim, eps);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x_in, const at::Tensor& residual_in,
                                                const at::Tensor& weight_in, double eps) {
  check_norm(x_in, weight_in);
  TORCH_CHECK(x_in.sizes() == residual_in.sizes() && x_in.scalar_type() == residual_in.scalar_type(),
              "x and residual must have one shape and dtype");
  const at::Tensor x = x_in.contiguous(), residual = residual_in.contiguous(), weight = weight_in.contiguous();
  at::Tensor out = at::empty_like(x), sum = at::empty_like(x);
  const int64_t dim = x.size(-1), rows = dim == 0 ? 0 : x.numel() / dim;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_rms_norm", [&] {
    norm_rows<scalar_t>(raw<scalar_t>(x), raw_mut<scalar_t>(sum), raw<scalar_t>(residual), raw<scalar_t>(weight),
                        raw_mut<scalar_t>(out), rows, dim, eps);
  });
  return {out, sum};
}

// x [T, H, D] (any strides but a contiguous last dim) rotated into out [T, H, D] (contiguous).
template <typename T>
void rotate(const at::Tensor& x, at::Tensor& out, const int64_t* positions, const float* cache, int64_t cache_dim) {
  const int64_t tokens = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  const int64_t st = x.stride(0), sh = x.stride(1);
  const RawOf<T>* src = raw<T>(x);
  RawOf<T>* dst = raw_mut<T>(out);
  at::parallel_for(0, tokens, kRowsPerTask, [&](int64_t begin, int64_t end) {
    std::vector<float> c(half), s(half);  // cos and sin in T's precision, as the reference casts them
    for (int64_t t = begin; t < end; ++t) {
      const float* row = cache + positions[t] * cache_dim;
      for (int64_t i = 0; i < half; ++i) {
        c[i] = rounded<T>(row[i]);
        s[i] = rounded<T>(row[half + i]);
      }
      for (int64_t h = 0; h < heads; ++h) {
        const RawOf<T>* __restrict__ a = src + t * st + h * sh;
        RawOf<T>* __restrict__ o = dst + (t * heads + h) * 2 * half;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = Io<T>::load(a[i]), x2 = Io<T>::load(a[half + i]);
          o[i] = Io<T>::store(rounded<T>(x1 * c[i]) + rounded<T>(-x2 * s[i]));
          o[half + i] = Io<T>::store(rounded<T>(x2 * c[i]) + rounded<T>(x1 * s[i]));
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rotary_neox(const at::Tensor& positions_in, const at::Tensor& q,
                                               const at::Tensor& k, const at::Tensor& cache_in) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu(), "rotary_neox is a CPU kernel");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && q.size(0) == k.size(0) && q.size(2) == k.size(2),
              "q and k must be [T, H, D] with one T and D");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && q.size(2) % 2 == 0, "the rotated dim must be contiguous and even");
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "q and k must have one dtype");
  TORCH_CHECK(cache_in.scalar_type() == at::kFloat && cache_in.dim() == 2 && cache_in.size(1) == q.size(2),
              "cos_sin_cache must be float32 [max_pos, D]");
  const at::Tensor positions = positions_in.to(at::kLong).contiguous(), cache = cache_in.contiguous();
  if (positions.numel() > 0) {
    const int64_t lo = positions.min().item<int64_t>(), hi = positions.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < cache.size(0), "a position is outside cos_sin_cache");
  }
  TORCH_CHECK(positions.numel() == q.size(0), "one position per token");
  at::Tensor q_out = at::empty(q.sizes(), q.options()), k_out = at::empty(k.sizes(), k.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "rotary_neox", [&] {
    rotate<scalar_t>(q, q_out, positions.data_ptr<int64_t>(), cache.data_ptr<float>(), cache.size(1));
    rotate<scalar_t>(k, k_out, positions.data_ptr<int64_t>(), cache.data_ptr<float>(), cache.size(1));
  });
  return {q_out, k_out};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pagebatch_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rotary_neox(Tensor positions, Tensor q, Tensor k, Tensor cos_sin_cache) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pagebatch_cpu, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("rotary_neox", &rotary_neox);
}
