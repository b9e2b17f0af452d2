// SeekServe's CPU kernels: declarations shared by the kernel files and the Python bindings.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

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

// linear_int8.cpp
torch::Tensor pack_int8(const torch::Tensor& weight);
torch::Tensor int8_linear(const torch::Tensor& x, const torch::Tensor& packed,
                          const torch::Tensor& scales, const std::optional<torch::Tensor>& bias);

// linear_bf16.cpp
torch::Tensor pack_bf16(const torch::Tensor& weight);
torch::Tensor bf16_linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t out_features,
                          const std::optional<torch::Tensor>& bias);

// decoder.cpp: a linear layer as its Python module computes it, callable without Python.
class Linear {
 public:
  static Linear dense(torch::Tensor weight, std::optional<torch::Tensor> bias);
  // weight in oneDNN's packed layout (models/layers/linear.py: pack_weight); up to max_rows
  // rows, bf16_linear on `tiled_weight` (pack_bf16's layout) where given
  static Linear packed(torch::Tensor packed_weight, std::optional<torch::Tensor> bias,
                       std::optional<torch::Tensor> tiled_weight, int64_t out_features,
                       int64_t max_rows);
  // an int8 kernel up to max_rows rows, `dense` (the dequantized weights) above: tiled →
  // int8_linear on pack_int8's layout, else at::_weight_int8pack_mm on (N, K) weights
  static Linear int8(torch::Tensor weight_int8, torch::Tensor scales,
                     std::optional<torch::Tensor> bias, const Linear& dense, int64_t max_rows,
                     bool tiled);
  torch::Tensor operator()(const torch::Tensor& x) const;

 private:
  enum class Kind { kDense, kPacked, kInt8, kInt8Tiled };
  Kind kind_ = Kind::kDense;
  torch::Tensor weight_, scales_, tiled_;
  std::optional<torch::Tensor> bias_;
  std::shared_ptr<Linear> dense_;
  int64_t max_rows_ = 0, out_features_ = 0;
};

// decoder.cpp: the decode step of a llama-family model, all layers in one call.
class Decoder {
 public:
  Decoder(int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double eps, double scale,
          torch::Tensor final_norm);
  void add_layer(torch::Tensor input_norm, Linear qkv, Linear o, torch::Tensor post_norm,
                 Linear gate_up, Linear down, torch::Tensor kv_cache);
  // x: (T, hidden) embeddings of one token per request (updated in place); cos, sin: (T, 1, D);
  // returns the final-normed hidden states (T, hidden)
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& block_table,
                        const torch::Tensor& kv_lens, const torch::Tensor& slot_mapping,
                        const torch::Tensor& cos, const torch::Tensor& sin) const;

 private:
  struct Layer {
    torch::Tensor input_norm;
    Linear qkv, o;
    torch::Tensor post_norm;
    Linear gate_up, down;
    torch::Tensor kv_cache;
  };
  int64_t num_heads_, num_kv_heads_, head_dim_;
  double eps_, scale_;
  torch::Tensor final_norm_;
  std::vector<Layer> layers_;
};
