// Paged decode attention for CPU: one query token per sequence, K/V read in place from the paged
// caches [num_blocks, block_size, num_kv_heads, head_dim] (no gather into a padded copy).
//
// Work item = (sequence, kv heads, context range). Normally an item is a whole sequence (for a
// sliding-window layer, its last `window` keys), so each cache block is read once, all kv heads
// together; with fewer sequences than 4x the threads an item is one kv head, and contexts are split into block-aligned chunks (merged afterwards with their
// running max / sum, flash-decoding style) while there are still too few items. Items run under
// OpenMP with dynamic scheduling, longest first. Per item: scores of all its query heads (one pass
// over K), an fp32 softmax, the fp32 weighted sum of values (one pass over V).
//
// The extension is built with -march=native. With AVX-512, head dims that are multiples of 16
// take intrinsics paths: the dot products of 16 keys are reduced together (a transpose-add tree,
// not one horizontal sum per key); bf16 keys use vdpbf16ps (exact bf16 products, fp32 sums) when
// the CPU has AVX512-BF16; value rows are converted to fp32 in registers and accumulated into up
// to 16 registers of query-head accumulators. With AVX2 + FMA + F16C and no AVX-512, head dims
// that are multiples of 8 take the same paths 8 lanes wide (eight keys' dot products reduced
// together, value accumulators in registers). Everything else takes plain loops the compiler
// vectorizes. The next cache block is prefetched while one is computed. Accumulation is fp32 for every cache dtype.
//
// Depends only on c10's header-only BFloat16/Half and OpenMP; kernels/csrc/cpu_attention.cpp binds it.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#define PAGEBATCH_AVX512 1
#else
#define PAGEBATCH_AVX512 0
#endif

#if !PAGEBATCH_AVX512 && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define PAGEBATCH_AVX2 1
#else
#define PAGEBATCH_AVX2 0
#endif

namespace pagebatch {

struct DecodeParams {
  const void* q;  // [T, H, D], head_dim contiguous
  void* out;      // [T, H, D], head_dim contiguous, same dtype as q
  const void* k;  // [num_blocks, block_size, Hkv, D], head_dim contiguous
  const void* v;  // same strides as k
  int64_t q_row, q_head, o_row, o_head;
  int64_t block_stride, token_stride, head_stride;
  const int32_t* tables;  // [B, max_blocks], rows contiguous
  int64_t table_row;
  const int64_t* seq_idx;  // [n] row of tables for decode i
  const int64_t* row_idx;  // [n] query / output row of decode i
  const int32_t* ctx;      // [n] context length of decode i (>= 1)
  int64_t n;
  int H, Hkv, D, block_size;
  float scale;
  int64_t min_split_len;  // <= 0: never split a context
  int64_t window;         // > 0: a sliding-window layer's; decode i reads only its last `window` keys
  int threads;
};

namespace detail {

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float to_float(c10::Half x) { return static_cast<float>(x); }

template <typename T>
inline T from_float(float x) {
  return static_cast<T>(x);
}

// exp(x) for x <= 0 (Cephes expf polynomial, ~1 ulp); plain code so that `omp simd` vectorizes it.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

#if PAGEBATCH_AVX512
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}
#endif

// scores [G, n] (row stride ld) -> exp(scale * s - max) in place; m, l: per-head max (of scale * s) and sum.
inline void softmax_rows(float* __restrict scores, int G, int64_t n, int64_t ld, float scale, float* __restrict m,
                         float* __restrict l) {
  for (int g = 0; g < G; ++g) {
    float* sg = scores + g * ld;
#if PAGEBATCH_AVX512
    const __m512 vscale = _mm512_set1_ps(scale);
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(sg + i), vscale);
      _mm512_storeu_ps(sg + i, x);
      vmax = _mm512_max_ps(vmax, x);
    }
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - i)) - 1u);
    if (tail) {
      const __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, sg + i), vscale);
      _mm512_mask_storeu_ps(sg + i, tail, x);
      vmax = _mm512_mask_max_ps(vmax, tail, vmax, x);
    }
    const float mx = _mm512_reduce_max_ps(vmax);
    const __m512 vm = _mm512_set1_ps(mx);
    __m512 vsum = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
      const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sg + i), vm));
      _mm512_storeu_ps(sg + i, e);
      vsum = _mm512_add_ps(vsum, e);
    }
    if (tail) {
      const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, sg + i), vm));
      _mm512_mask_storeu_ps(sg + i, tail, e);
      vsum = _mm512_mask_add_ps(vsum, tail, vsum, e);
    }
    m[g] = mx;
    l[g] = _mm512_reduce_add_ps(vsum);
#else
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; ++i) {
      sg[i] *= scale;
      mx = std::max(mx, sg[i]);
    }
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) {
      const float e = exp_nonpositive(sg[i] - mx);
      sg[i] = e;
      sum += e;
    }
    m[g] = mx;
    l[g] = sum;
#endif
  }
}

#if PAGEBATCH_AVX512
// 16 consecutive values as fp32.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline __m512 load16(const c10::Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

#endif

#if PAGEBATCH_AVX2
// 8 consecutive values as fp32.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline __m256 load8(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// 8 vectors -> one vector whose lane t is the sum of the lanes of acc[t].
inline __m256 reduce8(const __m256* acc) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Lanes [0, count) set.
inline __m256i first_lanes(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

// Rows [stop, D] of a cache block as fp32 (row stride ld): the rows themselves for an fp32 cache,
// else converted into buf (row stride D).
template <typename T, int DC>
inline const float* block_rows(const T* base, int64_t token_stride, int64_t stop, int D_rt, float* __restrict buf, int64_t& ld) {
  const int D = DC > 0 ? DC : D_rt;
  if constexpr (std::is_same_v<T, float>) {
    ld = token_stride;
    return base;
  } else {
    for (int64_t t = 0; t < stop; ++t) {
      const T* row = base + t * token_stride;
      float* dst = buf + t * D;
#if PAGEBATCH_AVX512
      if constexpr (DC > 0 && DC % 16 == 0) {
        for (int d = 0; d < DC; d += 16) _mm512_storeu_ps(dst + d, load16(row + d));
        continue;
      }
#endif
#pragma omp simd
      for (int d = 0; d < D; ++d) dst[d] = to_float(row[d]);
    }
    ld = D;
    return buf;
  }
}

#if PAGEBATCH_AVX512
// 16 vectors -> one vector whose lane t is the sum of the lanes of acc[t].
inline __m512 reduce16(__m512* acc) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int width = 16; width > 1; width /= 2) {
    for (int i = 0; i < width / 2; ++i) {
      __m512 a = acc[2 * i], b = acc[2 * i + 1];
      acc[i] = _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
    }
  }
  return acc[0];
}
#endif

#if PAGEBATCH_AVX512 && defined(__AVX512BF16__)
#define PAGEBATCH_BF16_DOT 1
#else
#define PAGEBATCH_BF16_DOT 0
#endif

// scores[g * ld + t] = q_g . k_t (unscaled) for the `stop` key rows (<= 16 on the AVX-512 paths) of
// one block and kv head: k points at the first row, rows token_stride apart. qf: [G, D] fp32;
// qb: the same rows in the cache dtype (used by the bf16 dot-product path). buf: scratch [16, D].
template <typename T, int DC>
inline void block_scores(const float* __restrict qf, const T* __restrict qb, int G, int D_rt, const T* __restrict k,
                         int64_t token_stride, int64_t stop, float* __restrict scores, int64_t ld, float* __restrict buf) {
#if PAGEBATCH_AVX512
  if constexpr (DC > 0 && DC % 16 == 0) {
    const __mmask16 mask = static_cast<__mmask16>((1u << stop) - 1u);
#if PAGEBATCH_BF16_DOT
    if constexpr (std::is_same_v<T, c10::BFloat16> && DC % 32 == 0) {
      // bf16 x bf16 products are exact in fp32 and vdpbf16ps accumulates them in fp32.
      constexpr int C = DC / 32;
      for (int g = 0; g < G; ++g) {
        __m512bh qv[C];
        for (int c = 0; c < C; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(qb + g * DC + 32 * c);
        __m512 acc[16];
        for (int t = 0; t < 16; ++t) {
          acc[t] = _mm512_setzero_ps();
          if (t < stop) {
            const T* kt = k + t * token_stride;
            for (int c = 0; c < C; ++c) acc[t] = _mm512_dpbf16_ps(acc[t], qv[c], (__m512bh)_mm512_loadu_si512(kt + 32 * c));
          }
        }
        _mm512_mask_storeu_ps(scores + g * ld, mask, reduce16(acc));
      }
      return;
    }
#endif
    constexpr int C = DC / 16;
    int64_t kld;
    const float* kf = block_rows<T, DC>(k, token_stride, stop, DC, buf, kld);
    for (int g = 0; g < G; ++g) {
      __m512 qv[C];
      for (int c = 0; c < C; ++c) qv[c] = _mm512_loadu_ps(qf + g * DC + 16 * c);
      __m512 acc[16];
      for (int t = 0; t < 16; ++t) {
        if (t < stop) {
          const float* kt = kf + t * kld;
          __m512 s = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kt));
          for (int c = 1; c < C; ++c) s = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kt + 16 * c), s);
          acc[t] = s;
        } else {
          acc[t] = _mm512_setzero_ps();
        }
      }
      _mm512_mask_storeu_ps(scores + g * ld, mask, reduce16(acc));
    }
    return;
  }
#endif
#if PAGEBATCH_AVX2
  if constexpr (DC > 0 && DC % 8 == 0) {
    // Eight keys at a time: eight independent FMA chains, reduced together (no horizontal sum per key).
    constexpr int C = DC / 8;
    int64_t kld;
    const float* kf = block_rows<T, DC>(k, token_stride, stop, DC, buf, kld);
    for (int g = 0; g < G; ++g) {
      const float* qg = qf + g * DC;
      for (int64_t t0 = 0; t0 < stop; t0 += 8) {
        const int64_t count = std::min<int64_t>(8, stop - t0);
        __m256 acc[8];
        for (int t = 0; t < 8; ++t) {
          acc[t] = _mm256_setzero_ps();
          if (t < count) {
            const float* kt = kf + (t0 + t) * kld;
            for (int c = 0; c < C; ++c) acc[t] = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 8 * c), _mm256_loadu_ps(kt + 8 * c), acc[t]);
          }
        }
        if (count == 8) {
          _mm256_storeu_ps(scores + g * ld + t0, reduce8(acc));
        } else {
          _mm256_maskstore_ps(scores + g * ld + t0, first_lanes(count), reduce8(acc));
        }
      }
    }
    return;
  }
#endif
  const int D = DC > 0 ? DC : D_rt;
  int64_t kld;
  const float* kf = block_rows<T, DC>(k, token_stride, stop, D, buf, kld);
  for (int64_t t = 0; t < stop; ++t) {
    const float* kt = kf + t * kld;
    for (int g = 0; g < G; ++g) {
      const float* qg = qf + g * D;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int d = 0; d < D; ++d) s += qg[d] * kt[d];
      scores[g * ld + t] = s;
    }
  }
}

// acc[g, :] += sum_t p[g * ld + t] * v_t over the `stop` value rows of one block and kv head.
template <typename T, int DC>
inline void block_values(const float* __restrict p, int64_t ld, int G, int D_rt, const T* __restrict v, int64_t token_stride,
                         int64_t stop, float* __restrict acc, float* __restrict buf) {
#if PAGEBATCH_AVX512
  if constexpr (DC > 0 && DC % 16 == 0) {
    constexpr int C = DC / 16;
    // Each value row is loaded (and converted) once per group of GB heads whose accumulators stay in registers.
#ifndef PAGEBATCH_ACC_REGS
#define PAGEBATCH_ACC_REGS 16
#endif
    constexpr int GB = C >= PAGEBATCH_ACC_REGS ? 1 : (PAGEBATCH_ACC_REGS / C > 8 ? 8 : PAGEBATCH_ACC_REGS / C);
    for (int g0 = 0; g0 < G; g0 += GB) {
      const int gb = std::min(GB, G - g0);
      __m512 a[GB][C];
      for (int j = 0; j < GB; ++j)
        for (int c = 0; c < C; ++c) a[j][c] = j < gb ? _mm512_loadu_ps(acc + (g0 + j) * DC + 16 * c) : _mm512_setzero_ps();
      for (int64_t t = 0; t < stop; ++t) {
        const T* vt = v + t * token_stride;
        __m512 vr[C];
        for (int c = 0; c < C; ++c) vr[c] = load16(vt + 16 * c);
        for (int j = 0; j < GB; ++j) {
          if (j < gb) {
            const __m512 w = _mm512_set1_ps(p[(g0 + j) * ld + t]);
            for (int c = 0; c < C; ++c) a[j][c] = _mm512_fmadd_ps(w, vr[c], a[j][c]);
          }
        }
      }
      for (int j = 0; j < gb; ++j)
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + (g0 + j) * DC + 16 * c, a[j][c]);
    }
    return;
  }
#endif
#if PAGEBATCH_AVX2
  if constexpr (DC > 0 && DC % 8 == 0) {
    // The accumulators of up to 8 registers' worth of heads stay in registers over the block's rows.
    constexpr int C = DC / 8;
    constexpr int GB = C >= 8 ? 1 : 8 / C;
    for (int g0 = 0; g0 < G; g0 += GB) {
      const int gb = std::min(GB, G - g0);
      __m256 a[GB][C];
      for (int j = 0; j < GB; ++j)
        for (int c = 0; c < C; ++c) a[j][c] = j < gb ? _mm256_loadu_ps(acc + (g0 + j) * DC + 8 * c) : _mm256_setzero_ps();
      for (int64_t t = 0; t < stop; ++t) {
        const T* vt = v + t * token_stride;
        for (int j = 0; j < GB; ++j) {
          if (j < gb) {
            const __m256 w = _mm256_set1_ps(p[(g0 + j) * ld + t]);
            for (int c = 0; c < C; ++c) a[j][c] = _mm256_fmadd_ps(w, load8(vt + 8 * c), a[j][c]);
          }
        }
      }
      for (int j = 0; j < gb; ++j)
        for (int c = 0; c < C; ++c) _mm256_storeu_ps(acc + (g0 + j) * DC + 8 * c, a[j][c]);
    }
    return;
  }
#endif
  const int D = DC > 0 ? DC : D_rt;
  int64_t vld;
  const float* vf = block_rows<T, DC>(v, token_stride, stop, D, buf, vld);
  for (int64_t t = 0; t < stop; ++t) {
    const float* vt = vf + t * vld;
    for (int g = 0; g < G; ++g) {
      const float w = p[g * ld + t];
      float* ag = acc + g * D;
#pragma omp simd
      for (int d = 0; d < D; ++d) ag[d] += w * vt[d];
    }
  }
}

// Blocks sit anywhere in the pool, so the hardware prefetcher loses the stream at every block boundary:
// ask for the rows of the block that holds key `next` (if it is before `end`) while this one is computed.
template <typename T>
inline void prefetch_next_block(const T* cache, const int32_t* __restrict table, int block_size, int64_t block_stride,
                                int64_t token_stride, int64_t next, int64_t end) {
  if (next >= end) return;
  const int64_t rows = std::min<int64_t>(block_size - next % block_size, end - next);
  const char* first = reinterpret_cast<const char*>(cache + table[next / block_size] * block_stride + (next % block_size) * token_stride);
  const int64_t bytes = rows * token_stride * static_cast<int64_t>(sizeof(T));
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(first + b, 0, 3);
}

// One item: the query heads of kv heads [h0, h1) of one sequence over its keys [begin, end); each
// cache block is read once for all of them. qf: [(h1 - h0) * G, D] fp32 (unscaled), qb: the same in
// the cache dtype. Writes unnormalized acc [(h1 - h0) * G, D] and m / l [(h1 - h0) * G] (max of the
// scaled scores and sum of exp). scores: [(h1 - h0) * G, end - begin] scratch; buf: [16, D] scratch.
template <typename T, int DC>
inline void attend(const float* __restrict qf, const T* __restrict qb, float scale, int G, int D_rt, int h0, int h1,
                   const T* kc, const T* vc, int64_t block_stride, int64_t token_stride, int64_t head_stride,
                   const int32_t* __restrict table, int block_size, int64_t begin, int64_t end, float* __restrict scores,
                   float* __restrict buf, float* __restrict acc, float* __restrict m, float* __restrict l) {
  const int D = DC > 0 ? DC : D_rt;
  const int64_t n = end - begin;
  const int heads = (h1 - h0) * G;
  const int64_t chunk = std::min(block_size, 16);  // keys per step: the AVX-512 score path takes at most 16
  for (int64_t pos = begin; pos < end;) {
    const int64_t off = pos % block_size;
    const int64_t stop = std::min<int64_t>({end - pos, block_size - off, chunk});
    const T* base = kc + table[pos / block_size] * block_stride + off * token_stride;
    prefetch_next_block(kc, table, block_size, block_stride, token_stride, pos + stop, end);
    for (int h = h0; h < h1; ++h) {
      const int r = (h - h0) * G;
      block_scores<T, DC>(qf + r * D, qb + r * D, G, D, base + h * head_stride, token_stride, stop, scores + r * n + (pos - begin),
                          n, buf);
    }
    pos += stop;
  }
  softmax_rows(scores, heads, n, n, scale, m, l);
  std::fill(acc, acc + heads * D, 0.f);
  for (int64_t pos = begin; pos < end;) {
    const int64_t off = pos % block_size;
    const int64_t stop = std::min<int64_t>({end - pos, block_size - off, chunk});
    const T* base = vc + table[pos / block_size] * block_stride + off * token_stride;
    prefetch_next_block(vc, table, block_size, block_stride, token_stride, pos + stop, end);
    for (int h = h0; h < h1; ++h) {
      const int r = (h - h0) * G;
      block_values<T, DC>(scores + r * n + (pos - begin), n, G, D, base + h * head_stride, token_stride, stop, acc + r * D, buf);
    }
    pos += stop;
  }
}

struct Item {
  int64_t i;      // decode index
  int h0, h1;     // kv heads [h0, h1)
  int64_t begin;  // first key position
  int64_t end;    // one past the last key position
  int64_t slot;   // first partial-result row ([(h1 - h0) * G] rows), or -1 when the item covers the whole context
};

template <typename T, int DC>
void decode_attention(const DecodeParams& P) {
  const int G = P.H / P.Hkv, D = P.D, Hkv = P.Hkv, bs = P.block_size;
  const T* qp = static_cast<const T*>(P.q);
  T* op = static_cast<T*>(P.out);
  const T* kp = static_cast<const T*>(P.k);
  const T* vp = static_cast<const T*>(P.v);

  // Work items. An item reads whole cache blocks (all kv heads) unless there are fewer sequences
  // than 4x the threads: then one kv head each, and contexts are split (on block boundaries, into
  // chunks of at least min_split_len keys) while there are still too few items.
  const int64_t want = 4 * static_cast<int64_t>(std::max(1, P.threads));
  const int group = P.n >= want ? Hkv : 1;
  const int64_t units = P.n * (Hkv / group);
  std::vector<Item> items;
  items.reserve(units);
  std::vector<int64_t> first_slot(P.n, -1), num_splits(P.n, 1);
  int64_t slots = 0, max_len = 1;
  for (int64_t i = 0; i < P.n; ++i) {
    const int64_t ctx_len = P.ctx[i];
    const int64_t first = P.window > 0 ? std::max<int64_t>(0, ctx_len - P.window) : 0;  // first visible key
    const int64_t len = ctx_len - first;
    const int64_t blocks = (len + bs - 1) / bs;
    int64_t splits = 1;
    if (units < want && P.min_split_len > 0) {
      splits = std::min<int64_t>((want + units - 1) / units, (len + P.min_split_len - 1) / P.min_split_len);
      splits = std::max<int64_t>(1, std::min(splits, blocks));
    }
    const int64_t per = ((blocks + splits - 1) / splits) * bs;
    splits = (len + per - 1) / per;
    num_splits[i] = splits;
    if (splits > 1) first_slot[i] = slots;
    for (int h = 0; h < Hkv; h += group) {
      for (int64_t s = 0; s < splits; ++s) {
        const int64_t b = first + s * per, e = std::min(ctx_len, b + per);
        items.push_back({i, h, h + group, b, e, splits > 1 ? slots + (static_cast<int64_t>(h) * splits + s * group) * G : -1});
        max_len = std::max(max_len, e - b);
      }
    }
    if (splits > 1) slots += static_cast<int64_t>(Hkv) * splits * G;
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.end - a.begin > b.end - b.begin; });
  // Partial results of split items, one row per (item, query head): acc [slots, D], max and sum [slots].
  std::vector<float> part_acc(slots * D), part_m(slots), part_l(slots);

  const int64_t num_items = static_cast<int64_t>(items.size());
  const int nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(P.threads, num_items)));
  const int rows_per_item = group * G;
#pragma omp parallel num_threads(nthreads)
  {
    // scores [rows, max_len] | block rows [16, D] | qf [rows, D] | acc [rows, D] | m [rows] | l [rows]
    std::vector<float> scratch(rows_per_item * max_len + 16 * D + 2 * rows_per_item * D + 2 * rows_per_item);
    std::vector<T> qb(static_cast<size_t>(rows_per_item) * D);  // the query rows in the cache dtype, contiguous
    float* scores = scratch.data();
    float* rows = scores + rows_per_item * max_len;
    float* qf = rows + 16 * D;
    float* own_acc = qf + rows_per_item * D;
    float* own_m = own_acc + rows_per_item * D;
    float* own_l = own_m + rows_per_item;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < num_items; ++w) {
      const Item& it = items[w];
      const int64_t row = P.row_idx[it.i];
      const int nrows = (it.h1 - it.h0) * G;
      for (int r = 0; r < nrows; ++r) {
        const T* qr = qp + row * P.q_row + (it.h0 * G + r) * P.q_head;
        std::copy(qr, qr + D, qb.data() + r * D);
        for (int d = 0; d < D; ++d) qf[r * D + d] = to_float(qr[d]);
      }
      float* acc = it.slot >= 0 ? part_acc.data() + it.slot * D : own_acc;
      float* m = it.slot >= 0 ? part_m.data() + it.slot : own_m;
      float* l = it.slot >= 0 ? part_l.data() + it.slot : own_l;
      attend<T, DC>(qf, qb.data(), P.scale, G, D, it.h0, it.h1, kp, vp, P.block_stride, P.token_stride, P.head_stride,
                    P.tables + P.seq_idx[it.i] * P.table_row, bs, it.begin, it.end, scores, rows, acc, m, l);
      if (it.slot < 0) {
        for (int r = 0; r < nrows; ++r) {
          T* orow = op + row * P.o_row + (it.h0 * G + r) * P.o_head;
          const float inv = 1.f / l[r];
          for (int d = 0; d < D; ++d) orow[d] = from_float<T>(acc[r * D + d] * inv);
        }
      }
    }
    if (slots > 0) {
      // Merge the splits of each (sequence, query head). The partial row of kv head h (in the
      // group starting at h0), split s, query head g is first_slot + (h0 * splits + s * group + h - h0) * G + g.
      std::vector<float> res(D);
#pragma omp for schedule(static)
      for (int64_t p = 0; p < P.n * P.H; ++p) {
        const int64_t i = p / P.H, qh = p % P.H, splits = num_splits[i];
        if (splits == 1) continue;
        const int64_t h = qh / G, g = qh % G;
        const int64_t h0 = (h / group) * group;
        auto slot_of = [&](int64_t s) { return first_slot[i] + (h0 * splits + s * group + (h - h0)) * G + g; };
        float mx = -INFINITY;
        for (int64_t s = 0; s < splits; ++s) mx = std::max(mx, part_m[slot_of(s)]);
        float sum = 0.f;
        std::fill(res.begin(), res.end(), 0.f);
        for (int64_t s = 0; s < splits; ++s) {
          const int64_t slot = slot_of(s);
          const float w = std::exp(part_m[slot] - mx);
          sum += w * part_l[slot];
          const float* a = part_acc.data() + slot * D;
          for (int d = 0; d < D; ++d) res[d] += w * a[d];
        }
        T* orow = op + P.row_idx[i] * P.o_row + qh * P.o_head;
        const float inv = 1.f / sum;
        for (int d = 0; d < D; ++d) orow[d] = from_float<T>(res[d] * inv);
      }
    }
  }
}

template <typename T>
void decode_attention_any_dim(const DecodeParams& P) {
  switch (P.D) {
    case 64:
      return decode_attention<T, 64>(P);
    case 128:
      return decode_attention<T, 128>(P);
    default:
      return decode_attention<T, 0>(P);
  }
}

}  // namespace detail

// dtype: 0 float32, 1 bfloat16, 2 float16 (q, out and the caches all of it).
inline void decode_attention(const DecodeParams& P, int dtype) {
  if (P.n == 0) return;
  switch (dtype) {
    case 0:
      return detail::decode_attention_any_dim<float>(P);
    case 1:
      return detail::decode_attention_any_dim<c10::BFloat16>(P);
    default:
      return detail::decode_attention_any_dim<c10::Half>(P);
  }
}

}  // namespace pagebatch
