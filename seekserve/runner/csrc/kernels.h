// SeekServe's CPU kernels: declarations shared by the kernel files and the Python bindings.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// Element → fp32. bf16 is the top half of an fp32: a shift the compiler vectorizes.
inline float to_float(float x) { return x; }
inline float to_float(c10::Half x) { return static_cast<float>(x); }
inline float to_float(c10::BFloat16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// silu(g) · u for elements [begin, n) of one row, one element at a time (silu_and_mul's and
// w8a8_silu_mul's arithmetic where the CPU has no vector path)
template <typename T>
void silu_mul_scalar(const T* gate, const T* up, T* dst, int64_t begin, int64_t n) {
  for (int64_t i = begin; i < n; ++i) {
    const float g = to_float(gate[i]);
    const T act = static_cast<T>(g / (1.0f + std::exp(-g)));
    dst[i] = static_cast<T>(to_float(act) * to_float(up[i]));
  }
}

#if defined(__AVX512F__)
// exp of 16 floats: exp(x) = 2^n · exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 split in
// two for precision), exp(r) by Cephes' expf polynomial (~1 ulp), 2^n applied with scalef
// (so overflow gives inf and underflow 0, as std::exp).
//
// exp16_n: the same for N vectors, each step over all N before the next, so the core runs N
// independent chains side by side: one at a time, an epilogue waited on each chain's ~100-cycle
// latency (w8a8_silu_mul's silu epilogue: 7 % of a 1,130-token prefill; see silu16_n).
template <int N>
inline void exp16_n(__m512 (&x)[N]) {
  __m512 n[N], r[N], p[N];
  for (int i = 0; i < N; ++i) {
    x[i] = _mm512_max_ps(_mm512_min_ps(x[i], _mm512_set1_ps(89.0f)), _mm512_set1_ps(-104.0f));
  }
  for (int i = 0; i < N; ++i) {
    n[i] = _mm512_roundscale_ps(_mm512_mul_ps(x[i], _mm512_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  for (int i = 0; i < N; ++i) r[i] = _mm512_fnmadd_ps(n[i], _mm512_set1_ps(0.693359375f), x[i]);
  for (int i = 0; i < N; ++i) r[i] = _mm512_fnmadd_ps(n[i], _mm512_set1_ps(-2.12194440e-4f), r[i]);
  for (int i = 0; i < N; ++i) {
    p[i] = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r[i], _mm512_set1_ps(1.3981999507e-3f));
  }
  for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], r[i], _mm512_set1_ps(8.3334519073e-3f));
  for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], r[i], _mm512_set1_ps(4.1665795894e-2f));
  for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], r[i], _mm512_set1_ps(1.6666665459e-1f));
  for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], r[i], _mm512_set1_ps(5.0000001201e-1f));
  for (int i = 0; i < N; ++i) {
    p[i] = _mm512_fmadd_ps(p[i], _mm512_mul_ps(r[i], r[i]), _mm512_add_ps(r[i], _mm512_set1_ps(1.0f)));
  }
  for (int i = 0; i < N; ++i) x[i] = _mm512_scalef_ps(p[i], n[i]);
}

inline __m512 exp16(__m512 x) {
  __m512 v[1] = {x};
  exp16_n<1>(v);
  return v[0];
}

// silu(g) = g / (1 + exp(-g)) of 16 floats (silu_and_mul's and w8a8_silu_mul's arithmetic);
// silu16_n: of N vectors in place, step by step across them (exp16_n)
template <int N>
inline void silu16_n(__m512 (&g)[N]) {
  __m512 e[N];
  for (int i = 0; i < N; ++i) e[i] = _mm512_sub_ps(_mm512_setzero_ps(), g[i]);
  exp16_n<N>(e);
  for (int i = 0; i < N; ++i) g[i] = _mm512_div_ps(g[i], _mm512_add_ps(_mm512_set1_ps(1.0f), e[i]));
}

inline __m512 silu16(__m512 g) {
  __m512 v[1] = {g};
  silu16_n<1>(v);
  return v[0];
}

// 16 bf16 → 16 fp32 (a widening shift)
inline __m512 load_bf16(const c10::BFloat16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
#endif

#if defined(__AVX512BF16__)
// 16 fp32 rounded to bf16 (nearest even, as c10::BFloat16) and back to fp32
inline __m512 round_bf16(__m512 x) {
  const __m256i bits = (__m256i)_mm512_cvtneps_pbh(x);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
#endif

constexpr int64_t kTileWidth = 32, kTileRows = 4;  // outputs per tile, rows per weight load

// One output row of a tile: dst[j] = bf16(sums[j] · scales[j] + bias[j]) for j < width, scales
// and bias optional (nullptr), each step rounded as the scalar `float` expression rounds it
// (fp32 multiply, fp32 add, round to nearest even). 16 lanes at a time where the CPU has
// AVX512-BF16: the tiled kernels' epilogue, which scalar conversions made as slow as the
// tile products at 64 rows.
inline void store_row_bf16(c10::BFloat16* dst, const float* sums, int64_t width,
                           const float* scales, const c10::BFloat16* bias) {
  int64_t j = 0;
#if defined(__AVX512BF16__)
  for (; j < width; j += 16) {
    const __mmask16 mask = width - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (width - j)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(mask, sums + j);
    if (scales != nullptr) {
      v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mask, scales + j));
      asm("" : "+v"(v));  // the product rounded on its own: GCC would fuse it with the add
    }
    if (bias != nullptr) {
      const __m256i bits = _mm256_maskz_loadu_epi16(mask, bias + j);
      v = _mm512_add_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
    }
    _mm256_mask_storeu_epi16(dst + j, mask, (__m256i)_mm512_cvtneps_pbh(v));
  }
#endif
  for (; j < width; ++j) {
    volatile float value = sums[j];  // volatile: no fused multiply-add, as in the vector loop
    if (scales != nullptr) value = value * scales[j];
    if (bias != nullptr) value = value + to_float(bias[j]);
    dst[j] = static_cast<c10::BFloat16>(value);
  }
}

// `body(begin, end)` over [0, count) in chunks that the intra-op threads take in turn, so a
// thread that the OS has paused (the event loop, another process) delays only its own chunk.
// Guided: a take is a share of what is left (1 / (2 · threads)), so the last takes are single
// items and the threads finish together; fixed chunks of count / (8 · threads) left one
// thread waiting on the other at the end of each call (SmolLM2 decode, 16 rows, 2 threads:
// steps 4-5% faster guided, in alternating runs of one process).
template <typename Body>
void parallel_chunks(int64_t count, const Body& body) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), count);
  if (threads <= 1 || at::in_parallel_region()) {
    body(0, count);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    int64_t begin = next.load(std::memory_order_relaxed);
    while (begin < count) {
      const int64_t take = std::max<int64_t>(1, (count - begin) / (threads * 2));
      if (next.compare_exchange_weak(begin, begin + take, std::memory_order_relaxed)) {
        body(begin, std::min(count, begin + take));
        begin = next.load(std::memory_order_relaxed);
      }
    }
  });
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
// AMX as both tiled matmul kernels use it (linear_bf16.cpp, linear_int8.cpp): eight tile
// registers of 16 rows × 64 bytes. C 0-3: fp32 sums of x rows 0-15 / 16-31 × outputs 0-15 /
// 16-31 of a 32-wide tile; A 4-5: 16 rows of x each, as bf16 pairs; B 6-7: 16 pairs of k ×
// outputs 0-15 / 16-31, AMX's pair layout (the pack_bf16 layout is already that).
struct AmxTiles {
  AmxTiles() {  // configure this thread's tiles
    struct {
      uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
      uint16_t colsb[16] = {};
      uint8_t rows[16] = {};
    } config;
    for (int i = 0; i < 8; ++i) config.colsb[i] = 64, config.rows[i] = 16;
    _tile_loadconfig(&config);
  }
  ~AmxTiles() { _tile_release(); }
  AmxTiles(const AmxTiles&) = delete;
  AmxTiles& operator=(const AmxTiles&) = delete;

  // kA A tiles of 16 rows: C tiles 0..2kA-1 to zero
  template <int kA>
  static void zero() {
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (kA == 2) {
      _tile_zero(2);
      _tile_zero(3);
    }
  }
  // C += x rows · B 6-7, x: 16·kA rows of 16 bf16 pairs at `x_stride` bytes
  template <int kA>
  static void multiply(const uint32_t* x, int64_t x_stride) {
    _tile_loadd(4, x, x_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (kA == 2) {
      _tile_loadd(5, reinterpret_cast<const char*>(x) + 16 * x_stride, x_stride);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  // the C tiles to sums (16·kA rows × 32, row stride 32 floats)
  template <int kA>
  static void store(float* sums) {
    _tile_stored(0, sums, 128);
    _tile_stored(1, sums + 16, 128);
    if constexpr (kA == 2) {
      _tile_stored(2, sums + 16 * 32, 128);
      _tile_stored(3, sums + 16 * 32 + 16, 128);
    }
  }
};
#endif

// The loop both tiled matrix-vector kernels run (linear_bf16.cpp, linear_int8.cpp): tiles of
// kTileWidth outputs taken in chunks by PyTorch's intra-op threads; in each tile the rows in
// groups of up to kTileRows, `dot(t, m0, count, sums)` filling sums[m · kTileWidth + j] for rows
// m0 + m, then `store(row, n0, width, sums_of_row)` for each of them.
template <typename Dot, typename Store>
void for_each_tile(int64_t rows, int64_t n_size, const Dot& dot, const Store& store) {
  const int64_t tiles = (n_size + kTileWidth - 1) / kTileWidth;
  auto body = [&](int64_t begin, int64_t end) {
    float sums[kTileRows * kTileWidth];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * kTileWidth, width = std::min(kTileWidth, n_size - n0);
      for (int64_t m0 = 0; m0 < rows; m0 += kTileRows) {
        const int64_t count = std::min(kTileRows, rows - m0);
        dot(t, m0, count, sums);
        for (int64_t m = 0; m < count; ++m) store(m0 + m, n0, width, sums + m * kTileWidth);
      }
    }
  };
  parallel_chunks(tiles, body);
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
// The loop both AMX paths run (linear_bf16.cpp, linear_int8.cpp): tiles taken in chunks as in
// for_each_tile, this thread's tile registers configured; in each tile the rows of x (padded to
// 16 with zeros) 32 at a time, `dot(t, m0, two, sums)` filling sums[m · kTileWidth + j] for rows
// m0 + m (32 rows with `two` A tiles, else 16), then `store` as in for_each_tile for the real
// rows. Later passes over a tile find its weights in cache.
template <typename Dot, typename Store>
void for_each_tile_amx(int64_t rows, int64_t n_size, const Dot& dot, const Store& store) {
  const int64_t tiles = (n_size + kTileWidth - 1) / kTileWidth, padded = (rows + 15) / 16 * 16;
  parallel_chunks(tiles, [&](int64_t begin, int64_t end) {
    const AmxTiles tiles_in_use;
    alignas(64) float sums[32 * kTileWidth];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * kTileWidth, width = std::min(kTileWidth, n_size - n0);
      for (int64_t m0 = 0; m0 < padded; m0 += 32) {
        dot(t, m0, padded - m0 > 16, sums);
        for (int64_t m = m0; m < std::min(rows, m0 + 32); ++m) {
          store(m, n0, width, sums + (m - m0) * kTileWidth);
        }
      }
    }
  });
}
#endif

// huge_pages.cpp: a contiguous tensor (uninitialised) / a contiguous copy on 2 MiB pages
torch::Tensor huge_pages_empty(const std::vector<int64_t>& sizes, at::ScalarType dtype);
torch::Tensor huge_pages_copy(const torch::Tensor& tensor);

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

// linear_w8a8.cpp
std::tuple<torch::Tensor, torch::Tensor> pack_w8a8(const torch::Tensor& weight);
torch::Tensor w8a8_linear(const torch::Tensor& x, const torch::Tensor& packed,
                          const torch::Tensor& offsets, const torch::Tensor& scales,
                          const std::optional<torch::Tensor>& bias);
torch::Tensor w8a8_silu_mul(const torch::Tensor& x, const torch::Tensor& packed,
                            const torch::Tensor& offsets, const torch::Tensor& scales);

// prefill_attention.cpp
bool prefill_attention_supported(const torch::Tensor& q, const torch::Tensor& k);
torch::Tensor prefill_attention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, double scale);
torch::Tensor paged_prefill_attention(const torch::Tensor& q, const torch::Tensor& kv_cache,
                                      const torch::Tensor& block_table,
                                      const torch::Tensor& kv_lens, const torch::Tensor& q_lens,
                                      double scale);

// argmax.cpp
torch::Tensor argmax_rows(const torch::Tensor& logits);

// linear_bf16.cpp
torch::Tensor pack_bf16(const torch::Tensor& weight);
torch::Tensor bf16_linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t out_features,
                          const std::optional<torch::Tensor>& bias);
bool amx_bf16_available();

// decoder.cpp: this step's K/V rows into their cache slots (index_copy_ without its
// TensorIterator; bounds checked)
void write_kv_(const torch::Tensor& kv_cache, const torch::Tensor& k, const torch::Tensor& v,
               const torch::Tensor& slot_mapping);

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
  // w8a8_linear on pack_w8a8's layout (models/layers/quant.py: W8A8Linear), any number of rows
  static Linear w8a8(torch::Tensor packed, torch::Tensor offsets, torch::Tensor scales,
                     std::optional<torch::Tensor> bias);
  // a gated MLP's gate_up layer with silu in its epilogue (w8a8_silu_mul): its output is
  // silu(gate) · up, (M, N/2)
  static Linear w8a8_silu_mul(torch::Tensor packed, torch::Tensor offsets, torch::Tensor scales);
  torch::Tensor operator()(const torch::Tensor& x) const;
  bool fuses_silu_mul() const { return kind_ == Kind::kW8A8SiluMul; }

 private:
  enum class Kind { kDense, kPacked, kInt8, kInt8Tiled, kW8A8, kW8A8SiluMul };
  Kind kind_ = Kind::kDense;
  torch::Tensor weight_, scales_, tiled_, offsets_;
  std::optional<torch::Tensor> bias_;
  std::shared_ptr<Linear> dense_;
  int64_t max_rows_ = 0, out_features_ = 0;
};

// decoder.cpp: a step of a llama-family model, all layers in one call.
//
// One attention group of a step (runner/inputs.py: AttentionGroup): the step's token rows
// [start, start + count), attended as decodes (one token per request), as one request's chunk
// from position 0 over its own K/V (prefill_attention), or as chunks after cached positions
// (paged_prefill_attention; q_lens their new tokens).
struct StepGroup {
  enum class Kind : int64_t { kDecode = 0, kCausal = 1, kPaged = 2 };
  int64_t start = 0, count = 0;
  Kind kind = Kind::kDecode;
  torch::Tensor block_table, kv_lens, q_lens;
};

class Decoder {
 public:
  Decoder(int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double eps, double scale,
          torch::Tensor final_norm);
  void add_layer(torch::Tensor input_norm, Linear qkv, Linear o, torch::Tensor post_norm,
                 Linear gate_up, Linear down, torch::Tensor kv_cache);
  // x: (T, hidden) embeddings of the step's tokens (updated in place); groups: the step's
  // attention groups, in token order; cos, sin: (T, 1, D). Returns the final-normed hidden
  // states (T, hidden); with `rows` (the sampling rows, `sample`: them as a decode group over
  // all their K/V), the last layer writes every token's K/V but attends and runs its MLP for
  // those rows only: (len(rows), hidden).
  torch::Tensor forward(torch::Tensor x, const std::vector<StepGroup>& groups,
                        const torch::Tensor& slot_mapping, const torch::Tensor& cos,
                        const torch::Tensor& sin, const std::optional<torch::Tensor>& rows,
                        const std::optional<StepGroup>& sample) const;

 private:
  struct Layer {
    torch::Tensor input_norm;
    Linear qkv, o;
    torch::Tensor post_norm;
    Linear gate_up, down;
    torch::Tensor kv_cache;
  };
  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& kv_cache, const StepGroup& group) const;
  int64_t num_heads_, num_kv_heads_, head_dim_;
  double eps_, scale_;
  torch::Tensor final_norm_;
  std::vector<Layer> layers_;
};
