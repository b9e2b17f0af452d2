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
// Items are spread over PyTorch's intra-op threads (at::parallel_for).
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
  at::parallel_for(0, batch * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
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
