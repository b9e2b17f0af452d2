// RMSNorm (optionally fused with the residual add before it) and SiLU-and-multiply, with the
// rounding steps of the transformers reference in the compute dtype T:
//   rms_norm:      y = T(x * rsqrt(mean(x²) + eps)) (fp32 inside), out = T(weight * y)
//   add_rms_norm:  residual = T(residual + delta) in place, out = rms_norm(residual)
//   silu_and_mul:  gate_up = [gate ‖ up] → out = T(T(silu(gate)) * up)
//   rotary_:       x = T(T(x * cos) + T(rotate_half(x) * sin)) in place
// One pass over each row instead of the 6-10 separate PyTorch ops of the composite versions.
// Rows are spread over PyTorch's intra-op threads.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

// One row of norm_rows, 16 elements at a time where the CPU has the instructions (bf16 rows
// of a multiple of 16); the same rounding steps. Returns false where it did nothing.
template <typename T>
bool norm_row_vector(const T*, const T*, T*, int64_t, float, T*, const T*, float*) {
  return false;
}

#if defined(__AVX512BF16__)
inline void store_bf16(c10::BFloat16* dst, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(v));
}

template <>
bool norm_row_vector<c10::BFloat16>(const c10::BFloat16* src, const c10::BFloat16* weight,
                                    c10::BFloat16* dst, int64_t n, float eps,
                                    c10::BFloat16* residual, const c10::BFloat16* delta,
                                    float* x) {
  if (n % 16 != 0) return false;
  __m512 sum_sq = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    __m512 v;
    if (residual != nullptr) {  // residual = T(residual + delta), the rounded sum normed
      store_bf16(residual + i, _mm512_add_ps(load_bf16(residual + i), load_bf16(delta + i)));
      v = load_bf16(residual + i);
    } else {
      v = load_bf16(src + i);
    }
    _mm512_storeu_ps(x + i, v);
    sum_sq = _mm512_fmadd_ps(v, v, sum_sq);
  }
  const float inv = 1.0f / std::sqrt(_mm512_reduce_add_ps(sum_sq) / static_cast<float>(n) + eps);
  const __m512 scale = _mm512_set1_ps(inv);
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 y = round_bf16(_mm512_mul_ps(_mm512_loadu_ps(x + i), scale));
    store_bf16(dst + i, _mm512_mul_ps(load_bf16(weight + i), y));
  }
  return true;
}
#endif

template <typename T>
void norm_rows(const T* __restrict__ in, const T* __restrict__ weight, T* __restrict__ out,
               int64_t rows, int64_t n, float eps, T* __restrict__ residual,
               const T* __restrict__ delta) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(n);
    for (int64_t r = begin; r < end; ++r) {
      float* __restrict__ x = row.data();
      if (norm_row_vector<T>(in == nullptr ? nullptr : in + r * n, weight, out + r * n, n, eps,
                             residual == nullptr ? nullptr : residual + r * n,
                             delta == nullptr ? nullptr : delta + r * n, x)) {
        continue;
      }
      if (residual != nullptr) {
        T* res = residual + r * n;
        const T* d = delta + r * n;
        for (int64_t i = 0; i < n; ++i) {
          const T sum = static_cast<T>(to_float(res[i]) + to_float(d[i]));
          res[i] = sum;
          x[i] = to_float(sum);
        }
      } else {
        const T* src = in + r * n;
        for (int64_t i = 0; i < n; ++i) x[i] = to_float(src[i]);
      }
      float sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum_sq)
      for (int64_t i = 0; i < n; ++i) sum_sq += x[i] * x[i];
      const float inv = 1.0f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
      T* dst = out + r * n;
      for (int64_t i = 0; i < n; ++i) {
        const T y = static_cast<T>(x[i] * inv);
        dst[i] = static_cast<T>(to_float(weight[i]) * to_float(y));
      }
    }
  });
}

// The first elements of a row, 16 at a time where the CPU has the instructions; returns how
// many it did.
template <typename T>
int64_t silu_mul_vector(const T*, const T*, T*, int64_t) {
  return 0;
}

#if defined(__AVX512F__)
template <>
int64_t silu_mul_vector<float>(const float* gate, const float* up, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 act = silu16(_mm512_loadu_ps(gate + i));
    _mm512_storeu_ps(dst + i, _mm512_mul_ps(act, _mm512_loadu_ps(up + i)));
  }
  return i;
}
#endif

#if defined(__AVX512BF16__)
template <>
int64_t silu_mul_vector<c10::BFloat16>(const c10::BFloat16* gate, const c10::BFloat16* up,
                                        c10::BFloat16* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 act = round_bf16(silu16(load_bf16(gate + i)));
    const __m256bh out = _mm512_cvtneps_pbh(_mm512_mul_ps(act, load_bf16(up + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)out);
  }
  return i;
}
#endif

template <typename T>
void silu_mul_rows(const T* __restrict__ gate_up, T* __restrict__ out, int64_t rows,
                   int64_t n) {
  at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* gate = gate_up + r * 2 * n;
      const T* up = gate + n;
      T* dst = out + r * n;
      silu_mul_scalar(gate, up, dst, silu_mul_vector(gate, up, dst, n), n);
    }
  });
}

void check_norm_args(const torch::Tensor& x, const torch::Tensor& weight) {
  TORCH_CHECK(x.is_contiguous() && x.dim() >= 1, "x must be contiguous");
  TORCH_CHECK(weight.is_contiguous() && weight.dim() == 1 && weight.size(0) == x.size(-1),
              "weight must be a contiguous (N,) tensor matching x's last dim");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "x and weight dtypes differ");
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check_norm_args(x, weight);
  auto out = torch::empty_like(x);
  const int64_t n = x.size(-1);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::BFloat16, at::ScalarType::Half, x.scalar_type(), "rms_norm", [&] {
        norm_rows<scalar_t>(x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                            out.data_ptr<scalar_t>(), x.numel() / n, n,
                            static_cast<float>(eps), nullptr, nullptr);
      });
  return out;
}

torch::Tensor add_rms_norm(torch::Tensor& residual, const torch::Tensor& delta,
                           const torch::Tensor& weight, double eps) {
  check_norm_args(residual, weight);
  TORCH_CHECK(delta.is_contiguous() && delta.sizes() == residual.sizes() &&
                  delta.scalar_type() == residual.scalar_type(),
              "delta must be contiguous and shaped like residual");
  auto out = torch::empty_like(residual);
  const int64_t n = residual.size(-1);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::BFloat16, at::ScalarType::Half, residual.scalar_type(), "add_rms_norm",
      [&] {
        norm_rows<scalar_t>(nullptr, weight.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                            residual.numel() / n, n, static_cast<float>(eps),
                            residual.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>());
      });
  return out;
}

torch::Tensor silu_and_mul(const torch::Tensor& gate_up) {
  TORCH_CHECK(gate_up.is_contiguous() && gate_up.size(-1) % 2 == 0,
              "gate_up must be contiguous with an even last dim");
  auto sizes = gate_up.sizes().vec();
  const int64_t n = sizes.back() / 2;
  sizes.back() = n;
  auto out = torch::empty(sizes, gate_up.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::BFloat16, at::ScalarType::Half, gate_up.scalar_type(), "silu_and_mul",
      [&] {
        silu_mul_rows<scalar_t>(gate_up.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                gate_up.numel() / (2 * n), n);
      });
  return out;
}

namespace {

// One head of rotary_rows, 16 elements at a time where the CPU has the instructions (bf16,
// half a head a multiple of 16); the same rounding steps. Returns false where it did nothing.
template <typename T>
bool rotary_head_vector(T*, const T*, const T*, int64_t) {
  return false;
}

#if defined(__AVX512BF16__)
template <>
bool rotary_head_vector<c10::BFloat16>(c10::BFloat16* head, const c10::BFloat16* cos,
                                       const c10::BFloat16* sin, int64_t half) {
  if (half % 16 != 0) return false;
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t i = 0; i < half; i += 16) {
    const __m512 x1 = load_bf16(head + i), x2 = load_bf16(head + half + i);
    // first half: x1·cos + (-x2)·sin; second half: x2·cos + x1·sin; each product rounded
    const __m512 lo = _mm512_add_ps(round_bf16(_mm512_mul_ps(x1, load_bf16(cos + i))),
                                    round_bf16(_mm512_mul_ps(_mm512_xor_ps(x2, sign),
                                                             load_bf16(sin + i))));
    const __m512 hi = _mm512_add_ps(round_bf16(_mm512_mul_ps(x2, load_bf16(cos + half + i))),
                                    round_bf16(_mm512_mul_ps(x1, load_bf16(sin + half + i))));
    store_bf16(head + i, lo);
    store_bf16(head + half + i, hi);
  }
  return true;
}
#endif

template <typename T>
void rotary_rows(T* __restrict__ x, int64_t row_stride, const T* __restrict__ cos,
                 const T* __restrict__ sin, int64_t rows, int64_t heads, int64_t dim) {
  const int64_t half = dim / 2;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> rotated(dim), values(dim);
    for (int64_t r = begin; r < end; ++r) {
      const T* c = cos + r * dim;
      const T* s = sin + r * dim;
      for (int64_t h = 0; h < heads; ++h) {
        T* head = x + r * row_stride + h * dim;
        if (rotary_head_vector<T>(head, c, s, half)) continue;
        for (int64_t i = 0; i < dim; ++i) values[i] = to_float(head[i]);
        for (int64_t i = 0; i < half; ++i) {
          rotated[i] = -values[i + half];
          rotated[i + half] = values[i];
        }
        for (int64_t i = 0; i < dim; ++i) {
          const T a = static_cast<T>(values[i] * to_float(c[i]));
          const T b = static_cast<T>(rotated[i] * to_float(s[i]));
          head[i] = static_cast<T>(to_float(a) + to_float(b));
        }
      }
    }
  });
}

}  // namespace

void rotary_(torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.stride(1) == x.size(2),
              "x must be (T, heads, D) with contiguous heads (any row stride)");
  const int64_t rows = x.size(0), heads = x.size(1), dim = x.size(2);
  TORCH_CHECK(dim % 2 == 0, "head_dim must be even");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == rows * dim &&
                  sin.numel() == rows * dim,
              "cos and sin must be contiguous (T, 1, D) tensors");
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
              "x, cos and sin dtypes differ");
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::BFloat16, at::ScalarType::Half, x.scalar_type(), "rotary_", [&] {
        rotary_rows<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), cos.data_ptr<scalar_t>(),
                              sin.data_ptr<scalar_t>(), rows, heads, dim);
      });
}
