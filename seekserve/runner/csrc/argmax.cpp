// Greedy decoding's argmax over each row of the logits (fp32, or bf16 as the LM head makes
// them: the same answer as over their fp32 copy, without making it), rows spread over
// PyTorch's intra-op threads. torch.argmax on a CPU reduces each row in one thread with AVX2 (64 rows of
// SmolLM2's 49,152 logits: 2.5 ms, a fifth of a step's matmuls); this reads them at memory
// speed. Same answer as torch.argmax: the first maximal index, or the first NaN's index in a
// row that holds a NaN.
#include "kernels.h"

#include <cmath>
#include <limits>

namespace {

template <typename T>
int64_t first_nan(const T* row, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(to_float(row[i]))) return i;
  }
  return -1;
}

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) { return load_bf16(p); }
#endif

template <typename T>
int64_t row_argmax(const T* __restrict__ row, int64_t n) {
  int64_t i = 0, best = 0;
  float best_value = -std::numeric_limits<float>::infinity();
  bool has_nan = false;
#if defined(__AVX512F__)
  if (n >= 16) {
    __m512 max_v = load16(row);
    __m512i max_i = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512i index = max_i;
    const __m512i step = _mm512_set1_epi32(16);
    __mmask16 nan = _mm512_cmp_ps_mask(max_v, max_v, _CMP_UNORD_Q);
    for (i = 16; i + 16 <= n; i += 16) {
      index = _mm512_add_epi32(index, step);
      const __m512 v = load16(row + i);
      nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      const __mmask16 greater = _mm512_cmp_ps_mask(v, max_v, _CMP_GT_OQ);  // keeps the first
      max_v = _mm512_mask_mov_ps(max_v, greater, v);
      max_i = _mm512_mask_mov_epi32(max_i, greater, index);
    }
    has_nan = nan != 0;
    best_value = _mm512_reduce_max_ps(max_v);
    const __mmask16 at_max = _mm512_cmp_ps_mask(max_v, _mm512_set1_ps(best_value), _CMP_EQ_OQ);
    const __m512i big = _mm512_set1_epi32(std::numeric_limits<int32_t>::max());
    best = _mm512_reduce_min_epi32(_mm512_mask_mov_epi32(big, at_max, max_i));
  }
#endif
  for (; i < n; ++i) {
    const float value = to_float(row[i]);
    if (std::isnan(value)) has_nan = true;
    if (value > best_value || (i == 0 && !(value < best_value))) {
      best_value = value;
      best = i;
    }
  }
  return has_nan ? first_nan(row, n) : best;
}

}  // namespace

torch::Tensor argmax_rows(const torch::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() &&
                  (logits.scalar_type() == torch::kFloat ||
                   logits.scalar_type() == torch::kBFloat16) &&
                  logits.size(1) > 0 && logits.size(1) < std::numeric_limits<int32_t>::max(),
              "logits must be a contiguous (B, V) fp32 or bf16 tensor with 0 < V < 2^31");
  auto out = torch::empty({logits.size(0)}, logits.options().dtype(torch::kInt64));
  int64_t* result = out.data_ptr<int64_t>();
  const int64_t n = logits.size(1);
  auto rows = [&](const auto* data) {
    at::parallel_for(0, logits.size(0), 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) result[r] = row_argmax(data + r * n, n);
    });
  };
  if (logits.scalar_type() == torch::kFloat) {
    rows(logits.data_ptr<float>());
  } else {
    rows(logits.data_ptr<c10::BFloat16>());
  }
  return out;
}
