// SeekServe's CPU kernels: declarations shared by the kernel files and the Python bindings.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <cstring>

// Element → fp32. bf16 is the top half of an fp32: a shift the compiler vectorizes.
inline float to_float(float x) { return x; }
inline float to_float(c10::Half x) { return static_cast<float>(x); }
inline float to_float(c10::BFloat16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// paged_attention.cpp
torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& kv_cache,
                                     const torch::Tensor& block_table,
                                     const torch::Tensor& kv_lens, double scale);

// norm_activation.cpp
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
torch::Tensor add_rms_norm(torch::Tensor& residual, const torch::Tensor& delta,
                           const torch::Tensor& weight, double eps);
torch::Tensor silu_and_mul(const torch::Tensor& gate_up);
void rotary_(torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
