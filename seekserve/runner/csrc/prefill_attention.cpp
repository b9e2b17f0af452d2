// Causal attention of a prefill from position 0 (one request, its own K/V), bf16, on
// AVX512-BF16's pairwise dot products: flash attention, the scores of a tile of 32 keys at a
// time, never the whole (n × n) matrix.
//
// PyTorch's CPU SDPA takes ~12 ms a layer for SmolLM2's 1,130-token prompt on a 2-core AMD EPYC
// (126 GFLOP/s; 2/3 of the prompt's prefill); without AMX its bf16 products run as plain
// vector code. Here K and V of each KV head are first laid out for vdpbf16ps (K: per tile of
// 32 keys, pairs of head dims side by side for each key; V: pairs of keys side by side for each
// head dim); then per (KV head, block of 16 query positions) work item, kRows query rows at a
// time (positions × the group's query heads) run over the key tiles up to the diagonal:
//   s = q·k in fp32 (bf16 products) · scale, masked above the diagonal;
//   online softmax in fp32 (running max m, sum l; o rescaled by exp(m_old - m_new));
//   o += bf16(p) · v (bf16 products, fp32 sums; o in registers for the whole row)
// and o / l rounded to bf16: the steps of SDPA's flash kernel (fp32 scores and softmax, bf16
// probabilities into the second product), in another order of additions.
//
// q: (n, H, D), k and v: (n, Hkv, D), bf16, any token stride (each token's heads side by side,
// each head contiguous); D 64 or 128, H a multiple of Hkv. Returns (n, H, D) contiguous.
#include "kernels.h"

#include <cmath>
#include <limits>

#if defined(__AVX512BF16__)
namespace {

constexpr int64_t kKeys = 32;       // keys per tile
constexpr int64_t kPositions = 16;  // query positions per work item

template <int64_t kDim, int kRows>
void rows_over_keys(const uint32_t* const* q_rows, const int64_t* positions, int rows,
                    const uint16_t* k_tiles, const uint32_t* v_pairs, int64_t last_key,
                    float scale, c10::BFloat16* const* out_rows) {
  constexpr int kPairs = kDim / 2;  // head-dim pairs in a q row
  constexpr int kVec = kDim / 16;   // zmm of fp32 in an output row
  __m512 o[kRows][kVec];
  float m[kRows], l[kRows];
  for (int r = 0; r < kRows; ++r) {
    for (int i = 0; i < kVec; ++i) o[r][i] = _mm512_setzero_ps();
    m[r] = -std::numeric_limits<float>::infinity();
    l[r] = 0.0f;
  }
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t key0 = 0; key0 <= last_key; key0 += kKeys) {
    const uint16_t* tile = k_tiles + (key0 / kKeys) * kPairs * kKeys * 2;
    __m512 s[kRows][2];
    for (int r = 0; r < kRows; ++r) s[r][0] = s[r][1] = _mm512_setzero_ps();
    for (int p = 0; p < kPairs; ++p) {
      const auto k0 = (__m512bh)_mm512_loadu_si512(tile + p * kKeys * 2);
      const auto k1 = (__m512bh)_mm512_loadu_si512(tile + p * kKeys * 2 + 32);
      for (int r = 0; r < kRows; ++r) {
        const auto qp = (__m512bh)_mm512_set1_epi32(static_cast<int>(q_rows[r][p]));
        s[r][0] = _mm512_dpbf16_ps(s[r][0], qp, k0);
        s[r][1] = _mm512_dpbf16_ps(s[r][1], qp, k1);
      }
    }
    alignas(64) uint32_t probs[kRows][kKeys / 2];  // bf16 pairs of keys
    for (int r = 0; r < kRows; ++r) {
      // keys above the row's position (and past the sequence) do not count
      const __m512i limit = _mm512_set1_epi32(static_cast<int>(positions[r] - key0));
      const __mmask16 valid0 = _mm512_cmple_epi32_mask(lane, limit);
      const __mmask16 valid1 =
          _mm512_cmple_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(16)), limit);
      const __m512 x0 = _mm512_mask_mov_ps(minus_inf, valid0, _mm512_mul_ps(s[r][0], _mm512_set1_ps(scale)));
      const __m512 x1 = _mm512_mask_mov_ps(minus_inf, valid1, _mm512_mul_ps(s[r][1], _mm512_set1_ps(scale)));
      const float new_max = std::max(m[r], _mm512_reduce_max_ps(_mm512_max_ps(x0, x1)));
      const float correction = std::exp(m[r] - new_max);
      const __m512 e0 = exp16(_mm512_sub_ps(x0, _mm512_set1_ps(new_max)));
      const __m512 e1 = exp16(_mm512_sub_ps(x1, _mm512_set1_ps(new_max)));
      l[r] = l[r] * correction + _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
      m[r] = new_max;
      if (correction != 1.0f) {
        const __m512 c = _mm512_set1_ps(correction);
        for (int i = 0; i < kVec; ++i) o[r][i] = _mm512_mul_ps(o[r][i], c);
      }
      // keys 0-15 and 16-31 as bf16, then interleaved into pairs (2j, 2j + 1)
      const __m512i both = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(e0));
      const __m512i all = _mm512_inserti64x4(both, (__m256i)_mm512_cvtneps_pbh(e1), 1);
      _mm512_store_si512(probs[r], all);  // 32 bf16 = 16 pairs in key order
    }
    const int64_t pairs = std::min<int64_t>(kKeys, last_key - key0 + 1 + 1) / 2;
    for (int64_t jp = 0; jp < pairs; ++jp) {
      const uint32_t* v = v_pairs + (key0 / 2 + jp) * kDim;
      __m512bh vv[kVec];
      for (int i = 0; i < kVec; ++i) vv[i] = (__m512bh)_mm512_loadu_si512(v + 16 * i);
      for (int r = 0; r < kRows; ++r) {
        const auto pp = (__m512bh)_mm512_set1_epi32(static_cast<int>(probs[r][jp]));
        for (int i = 0; i < kVec; ++i) o[r][i] = _mm512_dpbf16_ps(o[r][i], pp, vv[i]);
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    const __m512 inv = _mm512_set1_ps(1.0f / l[r]);
    for (int i = 0; i < kVec; ++i) {
      const __m256bh x = _mm512_cvtneps_pbh(_mm512_mul_ps(o[r][i], inv));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_rows[r] + 16 * i), (__m256i)x);
    }
  }
}

template <int64_t kDim>
void prefill(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, float scale,
             torch::Tensor& out) {
  constexpr int kRows = kDim == 64 ? 4 : 2;  // o of kRows rows stays in registers
  const int64_t n = q.size(0), heads = q.size(1), kv_heads = k.size(1), group = heads / kv_heads;
  const int64_t tiles = (n + kKeys - 1) / kKeys, padded = tiles * kKeys;
  // K: (Hkv, tiles, D/2, 32 keys, 2); V: (Hkv, padded/2 key pairs, D, 2); zero past n
  auto k_tiles = torch::zeros({kv_heads, tiles, kDim / 2, kKeys, 2}, q.options());
  auto v_pairs = torch::zeros({kv_heads, padded / 2, kDim, 2}, q.options());
  k_tiles.view({kv_heads, padded, kDim / 2, 2}).narrow(1, 0, n)
      .copy_(k.permute({1, 0, 2}).reshape({kv_heads, n, kDim / 2, 2}));
  // (tiles·32 keys) → (tiles, 32, D/2, 2) → (tiles, D/2, 32, 2)
  k_tiles = k_tiles.view({kv_heads, tiles, kKeys, kDim / 2, 2}).transpose(2, 3).contiguous();
  {
    auto vt = torch::zeros({kv_heads, padded, kDim}, q.options());
    vt.narrow(1, 0, n).copy_(v.permute({1, 0, 2}));
    v_pairs.copy_(vt.view({kv_heads, padded / 2, 2, kDim}).transpose(2, 3));
  }
  const auto* kt = reinterpret_cast<const uint16_t*>(k_tiles.data_ptr<c10::BFloat16>());
  const auto* vp = reinterpret_cast<const uint32_t*>(v_pairs.data_ptr<c10::BFloat16>());
  const auto* qd = q.data_ptr<c10::BFloat16>();
  auto* od = out.data_ptr<c10::BFloat16>();
  const int64_t q_stride = q.stride(0), blocks = (n + kPositions - 1) / kPositions;
  const int64_t k_head = tiles * kDim / 2 * kKeys * 2, v_head = padded / 2 * kDim;
  // items: (KV head, position block), the longest (last) blocks first for the chunked threads
  parallel_chunks(kv_heads * blocks, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item % kv_heads, block = blocks - 1 - item / kv_heads;
      const int64_t p0 = block * kPositions, p1 = std::min(n, p0 + kPositions);
      const int64_t count = (p1 - p0) * group;  // rows: (position, query head of the group)
      for (int64_t r0 = 0; r0 < count; r0 += kRows) {
        const uint32_t* q_rows[kRows];
        int64_t positions[kRows];
        c10::BFloat16* out_rows[kRows];
        const int rows = static_cast<int>(std::min<int64_t>(kRows, count - r0));
        for (int r = 0; r < kRows; ++r) {
          const int64_t row = r0 + std::min(r, rows - 1);  // padding rows repeat the last
          const int64_t position = p0 + row / group, head = g * group + row % group;
          q_rows[r] = reinterpret_cast<const uint32_t*>(qd + position * q_stride + head * kDim);
          positions[r] = position;
          out_rows[r] = od + (position * heads + head) * kDim;
        }
        const int64_t last_key = positions[rows - 1];  // rows go by position, then head
        rows_over_keys<kDim, kRows>(q_rows, positions, rows, kt + g * k_head, vp + g * v_head,
                                    last_key, scale, out_rows);
      }
    }
  });
}

}  // namespace
#endif

bool prefill_attention_supported(const torch::Tensor& q, const torch::Tensor& k) {
#if defined(__AVX512BF16__)
  const int64_t dim = q.dim() == 3 ? q.size(2) : 0;
  return q.scalar_type() == torch::kBFloat16 && (dim == 64 || dim == 128) && k.dim() == 3 &&
         k.size(2) == dim && q.size(1) % k.size(1) == 0;
#else
  return false;
#endif
}

torch::Tensor prefill_attention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, double scale) {
  TORCH_CHECK(prefill_attention_supported(q, k),
              "prefill_attention needs bf16 q (n, H, D) with D 64 or 128 and k (n, Hkv, D)");
  TORCH_CHECK(v.sizes() == k.sizes() && v.scalar_type() == q.scalar_type() &&
                  k.scalar_type() == q.scalar_type() && k.size(0) == q.size(0),
              "k and v must be (n, Hkv, D) tensors of q's dtype");
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->stride(2) == 1 && t->stride(1) == t->size(2),
                "each token's heads must lie side by side, each head contiguous");
  }
  auto out = torch::empty({q.size(0), q.size(1), q.size(2)}, q.options());
#if defined(__AVX512BF16__)
  if (q.size(0) == 0) return out;
  const float s = static_cast<float>(scale);
  if (q.size(2) == 64) {
    prefill<64>(q, k, v, s, out);
  } else {
    prefill<128>(q, k, v, s, out);
  }
#endif
  return out;
}
