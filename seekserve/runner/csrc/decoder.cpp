// A step of a llama-family decoder (llama, SmolLM2, qwen2) in one native call.
//
// A step of the Python model launches ~16 PyTorch ops and kernel calls per layer. At batch 1
// the Python around them costs about as much as the matmuls (SmolLM2-135M: ~9 of 24 ms); in a
// prefill it is serial time during which the other threads wait (~4 % of a 1,130-token
// prompt's step). `Decoder::forward` runs the same ops, in the same order and with the same
// kernels, from C++ with the GIL released: its output is bitwise the Python fast path's.
// Steps whose groups the kernels attend (decodes; bf16 prefill chunks) take it
// (CausalLM.forward); the others keep the Python path.
//
// Per layer, on x (T, hidden):
//   qkv = qkv_proj(rms_norm(x))
//   rotary_(q ‖ k heads in place); write k, v into the cache slots
//   a = o_proj(attention of each group: paged_decode_attention, prefill_attention or
//              paged_prefill_attention, as runner/attention.py picks them)
//   x += a; h = rms_norm(x)              (add_rms_norm)
//   x = x + down_proj(silu(gate) * up)
// then the final norm; with sampling rows, the last layer as CausalLM.sample_hidden runs it.
// Linear layers are `Linear`: dense (at::linear), oneDNN-packed bf16, or int8 weight-only with
// its dense fallback, or W8A8 (gate_up possibly with silu · up in its epilogue), each the same
// call its Python module makes.
#include "kernels.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <utility>
#include <vector>

namespace {

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed,
                         const std::optional<at::Tensor>& bias) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            c10::string_view, c10::List<std::optional<at::Scalar>>,
                            std::optional<c10::string_view>)>();
  return op.call(x, packed, bias, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

}  // namespace

Linear Linear::dense(torch::Tensor weight, std::optional<torch::Tensor> bias) {
  Linear linear;
  linear.kind_ = Kind::kDense;
  linear.weight_ = std::move(weight);
  linear.bias_ = std::move(bias);
  return linear;
}

Linear Linear::packed(torch::Tensor packed_weight, std::optional<torch::Tensor> bias,
                      std::optional<torch::Tensor> tiled_weight, int64_t out_features,
                      int64_t max_rows) {
  Linear linear;
  linear.kind_ = Kind::kPacked;
  linear.weight_ = std::move(packed_weight);
  linear.bias_ = std::move(bias);
  if (tiled_weight.has_value()) linear.tiled_ = std::move(*tiled_weight);
  linear.out_features_ = out_features;
  linear.max_rows_ = tiled_weight.has_value() ? max_rows : 0;
  return linear;
}

Linear Linear::int8(torch::Tensor weight_int8, torch::Tensor scales,
                    std::optional<torch::Tensor> bias, const Linear& dense, int64_t max_rows,
                    bool tiled) {
  Linear linear;
  linear.kind_ = tiled ? Kind::kInt8Tiled : Kind::kInt8;
  linear.weight_ = std::move(weight_int8);
  linear.scales_ = std::move(scales);
  linear.bias_ = std::move(bias);
  linear.dense_ = std::make_shared<Linear>(dense);
  linear.max_rows_ = max_rows;
  return linear;
}

Linear Linear::w8a8(torch::Tensor packed, torch::Tensor offsets, torch::Tensor scales,
                    std::optional<torch::Tensor> bias) {
  Linear linear;
  linear.kind_ = Kind::kW8A8;
  linear.weight_ = std::move(packed);
  linear.offsets_ = std::move(offsets);
  linear.scales_ = std::move(scales);
  linear.bias_ = std::move(bias);
  return linear;
}

Linear Linear::w8a8_silu_mul(torch::Tensor packed, torch::Tensor offsets, torch::Tensor scales) {
  Linear linear = w8a8(std::move(packed), std::move(offsets), std::move(scales), std::nullopt);
  linear.kind_ = Kind::kW8A8SiluMul;
  return linear;
}

torch::Tensor Linear::operator()(const torch::Tensor& x) const {
  switch (kind_) {
    case Kind::kW8A8:
    case Kind::kW8A8SiluMul: {
      // the decoder's (T, K) rows go in as they are: a reshape there and back costs two
      // dispatches a layer, ~120 a step, for nothing
      const bool rows = x.dim() == 2 && x.is_contiguous();
      const auto flat = rows ? x : x.reshape({-1, x.size(-1)}).contiguous();
      const auto out = kind_ == Kind::kW8A8
                           ? w8a8_linear(flat, weight_, offsets_, scales_, bias_)
                           : ::w8a8_silu_mul(flat, weight_, offsets_, scales_);
      if (rows) return out;
      auto sizes = x.sizes().vec();
      sizes.back() = out.size(-1);
      return out.reshape(sizes);
    }
    case Kind::kDense:
      return at::linear(x, weight_, bias_);
    case Kind::kPacked: {
      const int64_t in_features = x.size(-1);
      if (max_rows_ == 0 || x.numel() > max_rows_ * in_features) {
        return packed_linear(x, weight_, bias_);
      }
      const auto out = bf16_linear(x.reshape({-1, in_features}).contiguous(), tiled_, out_features_, bias_);
      auto sizes = x.sizes().vec();
      sizes.back() = out_features_;
      return out.reshape(sizes);
    }
    case Kind::kInt8:
    case Kind::kInt8Tiled: {
      const auto flat = x.reshape({-1, x.size(-1)});
      torch::Tensor out;
      if (flat.size(0) > max_rows_) {
        out = (*dense_)(flat);
      } else if (kind_ == Kind::kInt8Tiled) {
        out = int8_linear(flat.contiguous(), weight_, scales_, bias_);
      } else {
        out = at::_weight_int8pack_mm(flat, weight_, scales_);
        if (bias_.has_value()) out = out + *bias_;
      }
      auto sizes = x.sizes().vec();
      sizes.back() = out.size(-1);
      return out.reshape(sizes);
    }
  }
  TORCH_CHECK(false, "unknown linear kind");
}

void write_kv_(const torch::Tensor& kv_cache, const torch::Tensor& k, const torch::Tensor& v,
               const torch::Tensor& slot_mapping) {
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2 && kv_cache.is_contiguous(),
              "kv_cache must be a contiguous (2, num_blocks, block_size, Hkv, D) tensor");
  const int64_t heads = kv_cache.size(3), dim = kv_cache.size(4);
  const int64_t slots = kv_cache.size(1) * kv_cache.size(2), tokens = slot_mapping.numel();
  for (const auto* t : {&k, &v}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == tokens && t->size(1) == heads &&
                    t->size(2) == dim && t->stride(2) == 1 && t->stride(1) == dim &&
                    t->scalar_type() == kv_cache.scalar_type(),
                "k and v must be (T, Hkv, D) tensors of kv_cache's dtype, each token's heads "
                "contiguous");
  }
  TORCH_CHECK(slot_mapping.dim() == 1 && slot_mapping.is_contiguous() &&
                  slot_mapping.scalar_type() == torch::kLong,
              "slot_mapping must be a contiguous (T,) int64 tensor");
  const int64_t* slot = slot_mapping.data_ptr<int64_t>();
  const int64_t row_bytes = heads * dim * kv_cache.element_size();
  auto* k_plane = static_cast<char*>(kv_cache.data_ptr());
  auto* v_plane = k_plane + slots * row_bytes;
  const auto* k_rows = static_cast<const char*>(k.data_ptr());
  const auto* v_rows = static_cast<const char*>(v.data_ptr());
  const int64_t k_stride = k.stride(0) * k.element_size(), v_stride = v.stride(0) * v.element_size();
  for (int64_t t = 0; t < tokens; ++t) {
    TORCH_CHECK(slot[t] >= 0 && slot[t] < slots, "slot ", slot[t], " out of range [0, ", slots, ")");
  }
  // a prefill's rows over the threads (1,130 tokens: ~90 µs a layer on one); a decode
  // step's few rows on this one
  at::parallel_for(0, tokens, 256, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      std::memcpy(k_plane + slot[t] * row_bytes, k_rows + t * k_stride, row_bytes);
      std::memcpy(v_plane + slot[t] * row_bytes, v_rows + t * v_stride, row_bytes);
    }
  });
}

Decoder::Decoder(int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double eps,
                 double scale, torch::Tensor final_norm)
    : num_heads_(num_heads),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      eps_(eps),
      scale_(scale),
      final_norm_(std::move(final_norm)) {
  TORCH_CHECK(num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0,
              "num_heads must be a multiple of num_kv_heads");
}

void Decoder::add_layer(torch::Tensor input_norm, Linear qkv, Linear o, torch::Tensor post_norm,
                        Linear gate_up, Linear down, torch::Tensor kv_cache) {
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2 && kv_cache.size(3) == num_kv_heads_ &&
                  kv_cache.size(4) == head_dim_ && kv_cache.is_contiguous(),
              "kv_cache must be a contiguous (2, num_blocks, block_size, Hkv, D) tensor");
  layers_.push_back(Layer{std::move(input_norm), std::move(qkv), std::move(o),
                          std::move(post_norm), std::move(gate_up), std::move(down),
                          std::move(kv_cache)});
}

torch::Tensor Decoder::attend(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& kv_cache,
                              const StepGroup& group) const {
  const auto q_g = q.narrow(0, group.start, group.count);
  switch (group.kind) {
    case StepGroup::Kind::kDecode:
      return paged_decode_attention(q_g.contiguous(), kv_cache, group.block_table, group.kv_lens,
                                    scale_);
    case StepGroup::Kind::kCausal:
      return prefill_attention(q_g, k.narrow(0, group.start, group.count),
                               v.narrow(0, group.start, group.count), scale_);
    case StepGroup::Kind::kPaged:
      return paged_prefill_attention(q_g, kv_cache, group.block_table, group.kv_lens,
                                     group.q_lens, scale_);
  }
  TORCH_CHECK(false, "unknown attention group kind");
}

torch::Tensor Decoder::forward(torch::Tensor x, const std::vector<StepGroup>& groups,
                               const torch::Tensor& slot_mapping, const torch::Tensor& cos,
                               const torch::Tensor& sin, const std::optional<torch::Tensor>& rows,
                               const std::optional<StepGroup>& sample) const {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous (T, hidden) tensor");
  TORCH_CHECK(!layers_.empty(), "the decoder has no layers");
  TORCH_CHECK(!groups.empty(), "a step needs at least one attention group");
  TORCH_CHECK(rows.has_value() == sample.has_value(), "rows and their sample group go together");
  TORCH_CHECK(!sample.has_value() || (sample->kind == StepGroup::Kind::kDecode &&
                                      sample->start == 0 && sample->count == rows->numel()),
              "the sample group must be a decode group over the rows (start 0, len(rows))");
  const int64_t tokens = x.size(0);
  int64_t covered = 0;
  for (const StepGroup& group : groups) {
    TORCH_CHECK(group.start == covered && group.count > 0 && group.start + group.count <= tokens,
                "the groups must cover the step's ", tokens, " tokens in order");
    covered += group.count;
  }
  TORCH_CHECK(covered == tokens, "the groups cover ", covered, " of the step's ", tokens, " tokens");
  c10::InferenceMode guard;
  const int64_t q_size = num_heads_ * head_dim_, kv_size = num_kv_heads_ * head_dim_;
  // each layer's MLP residual add is fused with the next norm (add_rms_norm rounds the sum as
  // `x + delta` does, then norms it): one kernel instead of an ATen add and a norm
  auto h = rms_norm(x, layers_.front().input_norm, eps_);
  for (size_t index = 0; index < layers_.size(); ++index) {
    const Layer& layer = layers_[index];
    const bool last = index + 1 == layers_.size();
    const auto qkv = layer.qkv(h);  // (T, q_size + 2 kv_size)
    auto qk = qkv.narrow(1, 0, q_size + kv_size).view({tokens, num_heads_ + num_kv_heads_, head_dim_});
    rotary_(qk, cos, sin);
    const auto q = qk.narrow(1, 0, num_heads_);
    const auto k = qk.narrow(1, num_heads_, num_kv_heads_);
    const auto v = qkv.narrow(1, q_size + kv_size, kv_size).view({tokens, num_kv_heads_, head_dim_});
    write_kv_(layer.kv_cache, k, v, slot_mapping);
    torch::Tensor attn;
    if (last && rows.has_value()) {  // only the sampling rows attend (CausalLM.sample_hidden)
      attn = attend(q.index_select(0, *rows), k, v, layer.kv_cache, *sample);
      x = x.index_select(0, *rows);
    } else if (groups.size() == 1) {
      attn = attend(q, k, v, layer.kv_cache, groups.front());
    } else {
      attn = torch::empty({tokens, num_heads_, head_dim_}, q.options());
      for (const StepGroup& group : groups) {
        attn.narrow(0, group.start, group.count).copy_(attend(q, k, v, layer.kv_cache, group));
      }
    }
    const auto delta = layer.o(attn.reshape({attn.size(0), -1})).contiguous();
    const auto normed = add_rms_norm(x, delta, layer.post_norm, eps_);  // x += delta
    // silu(gate) · up: in the W8A8 gate_up kernel's epilogue, or a pass over its output
    const auto activated = layer.gate_up.fuses_silu_mul()
                               ? layer.gate_up(normed)
                               : silu_and_mul(layer.gate_up(normed).contiguous());
    const auto mlp = layer.down(activated).contiguous();
    h = add_rms_norm(x, mlp, last ? final_norm_ : layers_[index + 1].input_norm, eps_);
  }
  return h;
}
