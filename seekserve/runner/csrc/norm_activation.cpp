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

template <typename T>
void norm_rows(const T* __restrict__ in, const T* __restrict__ weight, T* __restrict__ out,
               int64_t rows, int64_t n, float eps, T* __restrict__ residual,
               const T* __restrict__ delta) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(n);
    for (int64_t r = begin; r < end; ++r) {
      float* __restrict__ x = row.data();
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

template <typename T>
void silu_mul_rows(const T* __restrict__ gate_up, T* __restrict__ out, int64_t rows,
                   int64_t n) {
  at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* gate = gate_up + r * 2 * n;
      const T* up = gate + n;
      T* dst = out + r * n;
      for (int64_t i = 0; i < n; ++i) {
        const float g = to_float(gate[i]);
        const T act = static_cast<T>(g / (1.0f + std::exp(-g)));
        dst[i] = static_cast<T>(to_float(act) * to_float(up[i]));
      }
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
