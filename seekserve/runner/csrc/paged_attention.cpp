// Paged decode attention for the CPU: one query token per request, K/V read in place from the
// block pool (no gather), online softmax, grouped-query heads sharing each K/V row.
//
// q:           (B, H, D)                                    compute dtype, contiguous
// kv_cache:    (2, num_blocks, block_size, Hkv, D)          plane 0 = K, 1 = V, contiguous
// block_table: (B, max_blocks) int64; kv_lens: (B,) int64 (tokens of each request, >= 1)
// returns      (B, H, D): softmax(q·Kᵀ · scale) V over positions [0, kv_lens[b])
//
// Work item = (request, kv head): the H / Hkv query heads of that kv head are scored against
// each K row once it is converted to fp32; accumulation in fp32, as SDPA's CPU kernel does.
// Items (their cost grows with the request's length) are taken in chunks by PyTorch's intra-op
// threads (kernels.h: parallel_chunks).
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// kDim > 0: head_dim known at compile time (fully unrolled, vectorized loops); 0: any.
template <typename T, int64_t kDim, int64_t kBlock>
void decode_attention(const T* __restrict__ q, const T* __restrict__ kv,
                      const int64_t* __restrict__ block_table, const int64_t* __restrict__ kv_lens,
                      T* __restrict__ out, int64_t batch, int64_t num_heads, int64_t num_kv_heads,
                      int64_t runtime_dim, int64_t num_blocks, int64_t runtime_block_size,
                      int64_t max_blocks, float scale) {
  const int64_t head_dim = kDim > 0 ? kDim : runtime_dim;
  const int64_t block_size = kBlock > 0 ? kBlock : runtime_block_size;
  const int64_t group = num_heads / num_kv_heads;
  const int64_t token_stride = num_kv_heads * head_dim;
  const int64_t block_stride = block_size * token_stride;
  const int64_t plane_stride = num_blocks * block_stride;
  parallel_chunks(batch * num_kv_heads, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(group * head_dim), acc(group * head_dim), row(head_dim);
    std::vector<float> probs(group * block_size), max_score(group), denom(group);
    float* __restrict__ r = row.data();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / num_kv_heads, g = item % num_kv_heads;
      const T* q_rows = q + (b * num_heads + g * group) * head_dim;
      for (int64_t i = 0; i < group * head_dim; ++i) qf[i] = to_float(q_rows[i]) * scale;
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(max_score.begin(), max_score.end(), -std::numeric_limits<float>::infinity());
      std::fill(denom.begin(), denom.end(), 0.0f);
      const int64_t length = kv_lens[b];
      for (int64_t blk = 0; blk * block_size < length; ++blk) {
        const int64_t n = std::min(block_size, length - blk * block_size);
        const T* k_block = kv + block_table[b * max_blocks + blk] * block_stride + g * head_dim;
        const T* v_block = k_block + plane_stride;
        for (int64_t t = 0; t < n; ++t) {
          const T* __restrict__ k_row = k_block + t * token_stride;
          for (int64_t d = 0; d < head_dim; ++d) r[d] = to_float(k_row[d]);
          for (int64_t h = 0; h < group; ++h) {
            const float* __restrict__ qh = qf.data() + h * head_dim;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int64_t d = 0; d < head_dim; ++d) s += qh[d] * r[d];
            probs[h * block_size + t] = s;
          }
        }
        for (int64_t h = 0; h < group; ++h) {
          float* p = probs.data() + h * block_size;
          const float block_max = *std::max_element(p, p + n);
          const float new_max = std::max(max_score[h], block_max);
          const float correction = std::exp(max_score[h] - new_max);
          float sum = 0.0f;
          int64_t t = 0;
#if defined(__AVX512F__)
          for (; t + 16 <= n; t += 16) {  // the whole block at once where it holds 16 tokens
            const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p + t), _mm512_set1_ps(new_max)));
            _mm512_storeu_ps(p + t, e);
            sum += _mm512_reduce_add_ps(e);
          }
#endif
          for (; t < n; ++t) {
            p[t] = std::exp(p[t] - new_max);
            sum += p[t];
          }
          denom[h] = denom[h] * correction + sum;
          max_score[h] = new_max;
          if (correction != 1.0f) {
            float* __restrict__ acc_h = acc.data() + h * head_dim;
            for (int64_t d = 0; d < head_dim; ++d) acc_h[d] *= correction;
          }
        }
        for (int64_t t = 0; t < n; ++t) {
          const T* __restrict__ v_row = v_block + t * token_stride;
          for (int64_t d = 0; d < head_dim; ++d) r[d] = to_float(v_row[d]);
          for (int64_t h = 0; h < group; ++h) {
            const float p = probs[h * block_size + t];
            float* __restrict__ acc_h = acc.data() + h * head_dim;
            for (int64_t d = 0; d < head_dim; ++d) acc_h[d] += p * r[d];
          }
        }
      }
      T* out_rows = out + (b * num_heads + g * group) * head_dim;
      for (int64_t h = 0; h < group; ++h) {
        const float inv = 1.0f / denom[h];
        for (int64_t d = 0; d < head_dim; ++d) {
          out_rows[h * head_dim + d] = static_cast<T>(acc[h * head_dim + d] * inv);
        }
      }
    }
  });
}

#if defined(__AVX512BF16__)
// sums[t] = the sum of v[t]'s 16 lanes, for 16 vectors at once: the halves of pairs of vectors
// added, then quarters, eighths, sixteenths (15 adds where 16 _mm512_reduce_add_ps take 64
// shuffles and adds). Each sum is added in _mm512_reduce_add_ps's order (upper 8 lanes to lower
// 8, then 4, 2, 1), so each equals it bit for bit.
inline __m512 sum_each16(const __m512 v[16]) {
  __m512 w[8], x[4], y[2];
  for (int i = 0; i < 8; ++i) {  // 256-bit halves: w[i] = (v[2i] lo+hi, v[2i+1] lo+hi)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  }
  for (int j = 0; j < 4; ++j) {  // 128-bit block k of x[j]: v[4j + k]'s 4 partial sums
    x[j] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * j], w[2 * j + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * j], w[2 * j + 1], 0xDD));
  }
  for (int m = 0; m < 2; ++m) {  // block k of y[m]: 2 sums of v[8m + k], then 2 of v[8m + 4 + k]
    const __m512d a = _mm512_castps_pd(x[2 * m]), b = _mm512_castps_pd(x[2 * m + 1]);
    y[m] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // lane 4k + j: the sum of v[4j + k]; back to lane t = 4j + k
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], 0x88),
                                 _mm512_shuffle_ps(y[0], y[1], 0xDD));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, z);
}

// The same attention for bf16 K/V, blocks of 16 tokens, head_dim kDim (64 or 128) and kGroup
// query heads per KV head, with the group's accumulators in registers:
//   q·k    vdpbf16ps (bf16 products summed in fp32, as SDPA's bf16 kernel does), the 16 sums
//          of a block at once (sum_each16);
//   softmax the block's 16 scores by exp16; the running max and sum in fp32;
//   p·V    vdpbf16ps on pairs of positions: the block's probabilities rounded to bf16 (as SDPA's
//          bf16 kernel rounds them before its p·V product), V rows t and t + 1 interleaved
//          into (v[t][d], v[t+1][d]) pairs by unpacklo/hi. Each accumulator then holds its
//          head dims in unpack order, put back in place once at the end (kInterleaved*).
template <int64_t kDim, int kGroup>
void decode_item_bf16(const c10::BFloat16* __restrict__ q_rows, const c10::BFloat16* __restrict__ kv,
                      const int64_t* __restrict__ blocks, int64_t length, int64_t block_stride,
                      int64_t plane_stride, int64_t token_stride, float scale,
                      c10::BFloat16* __restrict__ out_rows, const c10::BFloat16* after) {
  constexpr int64_t kBlock = 16;
  constexpr int kPairs = kDim / 32;  // zmm of bf16 pairs in a row
  constexpr int kVec = kDim / 16;    // zmm of fp32 in a row
  __m512bh qv[kGroup][kPairs];
  // acc[h][2i] / [2i + 1]: unpacklo / unpackhi of row zmm i: lane 4L + j holds dim
  // 32i + 8L + j / 32i + 8L + 4 + j (L: the 128-bit lane, j < 4)
  __m512 acc[kGroup][kVec];
  float max_score[kGroup], denom[kGroup];
  alignas(64) uint16_t probs[kGroup][kBlock];  // bf16 bits
  for (int h = 0; h < kGroup; ++h) {
    for (int i = 0; i < kPairs; ++i) {
      qv[h][i] = (__m512bh)_mm512_loadu_si512(q_rows + h * kDim + 32 * i);
    }
    for (int i = 0; i < kVec; ++i) acc[h][i] = _mm512_setzero_ps();
    max_score[h] = -std::numeric_limits<float>::infinity();
    denom[h] = 0.0f;
  }
  for (int64_t blk = 0; blk * kBlock < length; ++blk) {
    const int64_t n = std::min(kBlock, length - blk * kBlock);
    const c10::BFloat16* k_block = kv + blocks[blk] * block_stride;
    const c10::BFloat16* v_block = k_block + plane_stride;
    // the next block lies elsewhere in the pool: its rows are fetched while this one runs,
    // one K row per q·k row and one V row per V row below (64 prefetches in a burst filled
    // the core's miss buffers and stalled it: 0.30 against 0.19 ms a layer, cache cold)
    const char* next_k = reinterpret_cast<const char*>(
        (blk + 1) * kBlock < length ? kv + blocks[blk + 1] * block_stride : after);
    auto prefetch_row = [&](int64_t t, int64_t plane) {
      if (next_k == nullptr) return;
      const char* row = next_k + plane * plane_stride * 2 + t * token_stride * 2;
      for (int64_t line = 0; line < kDim * 2; line += 64) _mm_prefetch(row + line, _MM_HINT_T1);
    };
    const __mmask16 valid = static_cast<__mmask16>((1u << n) - 1);
    const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int h = 0; h < kGroup; ++h) {
      // the block's 16 q·k as vectors of partial sums, then summed all at once (sum_each16)
      __m512 dots[kBlock];
      for (int64_t t = 0; t < kBlock; ++t) {
        if (h == 0) prefetch_row(t, 0);
        dots[t] = _mm512_setzero_ps();
        if (t < n) {
          const c10::BFloat16* k_row = k_block + t * token_stride;
          for (int i = 0; i < kPairs; ++i) {
            const auto k_pairs = (__m512bh)_mm512_loadu_si512(k_row + 32 * i);
            dots[t] = _mm512_dpbf16_ps(dots[t], qv[h][i], k_pairs);
          }
        }
      }
      const __m512 scores = _mm512_mask_mov_ps(
          minus_inf, valid, _mm512_mul_ps(sum_each16(dots), _mm512_set1_ps(scale)));
      const float block_max = _mm512_reduce_max_ps(scores);
      if (block_max > max_score[h]) {  // rescale what came before (nothing before block 0)
        if (blk > 0) {
          const __m512 c = _mm512_set1_ps(std::exp(max_score[h] - block_max));
          denom[h] *= _mm512_cvtss_f32(c);
          for (int i = 0; i < kVec; ++i) acc[h][i] = _mm512_mul_ps(acc[h][i], c);
        }
        max_score[h] = block_max;
      }
      const __m512 e = exp16(_mm512_sub_ps(scores, _mm512_set1_ps(max_score[h])));
      denom[h] += _mm512_reduce_add_ps(e);
      _mm256_store_si256(reinterpret_cast<__m256i*>(probs[h]), (__m256i)_mm512_cvtneps_pbh(e));
    }
    for (int64_t t = 0; t < n; t += 2) {
      prefetch_row(t, 1);
      prefetch_row(t + 1, 1);
      const c10::BFloat16* v_row = v_block + t * token_stride;
      __m512i pairs[kVec];
      for (int i = 0; i < kPairs; ++i) {
        const __m512i a = _mm512_loadu_si512(v_row + 32 * i);
        // past the block's last position: zeros (a stale row could hold inf or NaN, 0 · NaN
        // would not vanish)
        const __m512i b = t + 1 < n ? _mm512_loadu_si512(v_row + token_stride + 32 * i)
                                    : _mm512_setzero_si512();
        pairs[2 * i] = _mm512_unpacklo_epi16(a, b);
        pairs[2 * i + 1] = _mm512_unpackhi_epi16(a, b);
      }
      for (int h = 0; h < kGroup; ++h) {
        int32_t two;
        std::memcpy(&two, probs[h] + t, 4);
        const auto p = (__m512bh)_mm512_set1_epi32(two);
        for (int i = 0; i < kVec; ++i) acc[h][i] = _mm512_dpbf16_ps(acc[h][i], p, (__m512bh)pairs[i]);
      }
    }
    for (int64_t t = n + (n & 1); t < kBlock; ++t) prefetch_row(t, 1);
  }
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int h = 0; h < kGroup; ++h) {
    const __m512 inv = _mm512_set1_ps(1.0f / denom[h]);
    for (int i = 0; i < kPairs; ++i) {
      const __m512 halves[2] = {_mm512_permutex2var_ps(acc[h][2 * i], first, acc[h][2 * i + 1]),
                                _mm512_permutex2var_ps(acc[h][2 * i], second, acc[h][2 * i + 1])};
      for (int half = 0; half < 2; ++half) {
        const __m256bh o = _mm512_cvtneps_pbh(_mm512_mul_ps(halves[half], inv));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_rows + h * kDim + 32 * i + 16 * half),
                            (__m256i)o);
      }
    }
  }
}

template <int64_t kDim, int kGroup>
void decode_attention_bf16(const c10::BFloat16* q, const c10::BFloat16* kv,
                           const int64_t* block_table, const int64_t* kv_lens,
                           c10::BFloat16* out, int64_t batch, int64_t num_kv_heads,
                           int64_t num_blocks, int64_t max_blocks, float scale) {
  const int64_t token_stride = num_kv_heads * kDim;
  const int64_t block_stride = 16 * token_stride;
  const int64_t plane_stride = num_blocks * block_stride;
  parallel_chunks(batch * num_kv_heads, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / num_kv_heads, g = item % num_kv_heads;
      const int64_t row = (b * num_kv_heads + g) * kGroup * kDim;  // == (b·H + g·group)·D
      // the first block of this thread's next item, prefetched during this item's last one
      const c10::BFloat16* after = nullptr;
      if (item + 1 < end) {
        const int64_t nb = (item + 1) / num_kv_heads, ng = (item + 1) % num_kv_heads;
        after = kv + ng * kDim + block_table[nb * max_blocks] * block_stride;
      }
      decode_item_bf16<kDim, kGroup>(q + row, kv + g * kDim, block_table + b * max_blocks,
                                     kv_lens[b], block_stride, plane_stride, token_stride, scale,
                                     out + row, after);
    }
  });
}

// The specialised kernel for (head_dim, group), or nullptr where there is none.
using Bf16Kernel = void (*)(const c10::BFloat16*, const c10::BFloat16*, const int64_t*,
                            const int64_t*, c10::BFloat16*, int64_t, int64_t, int64_t, int64_t,
                            float);

template <int64_t kDim>
Bf16Kernel bf16_kernel_for_group(int64_t group) {
  switch (group) {
    case 1: return decode_attention_bf16<kDim, 1>;
    case 2: return decode_attention_bf16<kDim, 2>;
    case 3: return decode_attention_bf16<kDim, 3>;
    case 4: return decode_attention_bf16<kDim, 4>;
    case 5: return decode_attention_bf16<kDim, 5>;
    case 6: return decode_attention_bf16<kDim, 6>;
    case 7: return decode_attention_bf16<kDim, 7>;
    case 8: return decode_attention_bf16<kDim, 8>;
    default: return nullptr;
  }
}

Bf16Kernel bf16_kernel(int64_t head_dim, int64_t block_size, int64_t group) {
  if (block_size != 16) return nullptr;
  if (head_dim == 64) return bf16_kernel_for_group<64>(group);
  if (head_dim == 128) return bf16_kernel_for_group<128>(group);
  return nullptr;
}
#endif

}  // namespace

torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& kv_cache,
                                     const torch::Tensor& block_table,
                                     const torch::Tensor& kv_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.is_contiguous(), "q must be a contiguous (B, H, D) tensor");
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2 && kv_cache.is_contiguous(),
              "kv_cache must be a contiguous (2, num_blocks, block_size, Hkv, D) tensor");
  TORCH_CHECK(kv_cache.scalar_type() == q.scalar_type(), "q and kv_cache dtypes differ");
  TORCH_CHECK(block_table.scalar_type() == torch::kInt64 && block_table.is_contiguous() &&
                  block_table.dim() == 2 && block_table.size(0) == q.size(0),
              "block_table must be a contiguous (B, max_blocks) int64 tensor");
  TORCH_CHECK(kv_lens.scalar_type() == torch::kInt64 && kv_lens.is_contiguous() &&
                  kv_lens.numel() == q.size(0),
              "kv_lens must be a contiguous (B,) int64 tensor");
  const int64_t num_heads = q.size(1), num_kv_heads = kv_cache.size(3);
  TORCH_CHECK(num_heads % num_kv_heads == 0 && kv_cache.size(4) == q.size(2),
              "head counts or head_dim do not match");
  auto out = torch::empty_like(q);
#if defined(__AVX512BF16__)
  if (q.scalar_type() == at::ScalarType::BFloat16) {
    if (auto kernel = bf16_kernel(q.size(2), kv_cache.size(2), num_heads / num_kv_heads)) {
      kernel(q.data_ptr<c10::BFloat16>(), kv_cache.data_ptr<c10::BFloat16>(),
             block_table.data_ptr<int64_t>(), kv_lens.data_ptr<int64_t>(),
             out.data_ptr<c10::BFloat16>(), q.size(0), num_kv_heads, kv_cache.size(1),
             block_table.size(1), static_cast<float>(scale));
      return out;
    }
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::BFloat16, at::ScalarType::Half, q.scalar_type(), "paged_decode_attention",
      [&] {
        auto run = [&](auto kernel) {
          kernel(q.data_ptr<scalar_t>(), kv_cache.data_ptr<scalar_t>(),
                 block_table.data_ptr<int64_t>(), kv_lens.data_ptr<int64_t>(),
                 out.data_ptr<scalar_t>(), q.size(0), num_heads, num_kv_heads, q.size(2),
                 kv_cache.size(1), kv_cache.size(2), block_table.size(1),
                 static_cast<float>(scale));
        };
        const int64_t dim = q.size(2), block = kv_cache.size(2);
        if (dim == 64 && block == 16) {
          run(decode_attention<scalar_t, 64, 16>);
        } else if (dim == 128 && block == 16) {
          run(decode_attention<scalar_t, 128, 16>);
        } else {
          run(decode_attention<scalar_t, 0, 0>);
        }
      });
  return out;
}
