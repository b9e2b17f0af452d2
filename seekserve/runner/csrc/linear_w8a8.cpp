// int8 weights × int8 activations (W8A8) on AVX512-VNNI's integer dot products.
//
// Without AMX, batched decode and prefill are bound by the vector units: vdpbf16ps adds 32
// products per instruction, vpdpbusd 64 (u8 × s8 → int32) at the same rate, so an int8 × int8
// product runs at twice the speed of bf16 (measured 505 against 237 GOP/s on one AMD EPYC
// core). llama.cpp multiplies its quantized weights by activations quantized to int8 in blocks
// of 32 (Q8_0) for the same reason; this kernel does the same with SeekServe's per-output-channel
// int8 weights (models/layers/quant.py):
//
//   activations, per row m and block b of 32 along K (kBlock):
//     d[m,b] = max|x[m, b·32 + i]| / 127            (fp32)
//     q[m,k] = round_half_even(x[m,k] / d[m,b])      (0 where d = 0), in [-127, 127]
//   out[m,n] = cast(acc[m,n] · scale[n] (+ bias[n])),
//     acc[m,n] = fma(D[m,n,b], d[m,b], acc) for b = 0, 1, ...   (fp32, from acc = 0)
//     D[m,n,b] = Σ_i q[m, b·32+i] · w[n, b·32+i]       (exact, int32)
//
// Every step is exact or one IEEE rounding in a fixed order, so `w8a8_reference` (plain PyTorch,
// models/layers/quant.py) computes the same bits. vpdpbusd multiplies unsigned by signed bytes: the kernel
// feeds q + 128 and starts each block's int32 sum at -128 · Σ_i w[n, b·32+i] (kept beside the
// packed weights), which cancels the offset exactly.
//
//   pack_w8a8(w: (N, K) int8) → (packed: (ceil(N/32), K/4, 32, 4) int8, offsets: (ceil(N/32),
//   K/32, 32) int32): tile t holds outputs [32t, 32t + 32), 4 consecutive k of one output per
//   32-bit lane (vpdpbusd's layout: one zmm = 16 outputs × 4 k); K a multiple of 32.
//   w8a8_linear(x (M, K) bf16 or fp32, packed, offsets, scales (N,) fp32, bias?) → (M, N)
//   w8a8_silu_mul(x, packed, offsets, scales) → (M, N/2): a gated MLP's gate_up layer with its
//   activation. The weights' rows are a gate/up pair interleaved by 16 (gate 16t..16t+15, then
//   up 16t..16t+15, for each t; models/layers/quant.py: W8A8Linear(silu_mul=True)), so each tile
//   holds both halves of 16 outputs and its epilogue writes silu(gate) · up, rounded as the two
//   separate ops round: the (M, N) gate_up output and the pass over it are never made.
#include "kernels.h"

#include <cmath>
#include <memory>
#include <tuple>

namespace {

constexpr int64_t kBlock = 32;            // activation scale block along K
constexpr int64_t kTile = kTileWidth;     // outputs per weight tile (kernels.h)
constexpr int64_t kPrefetchBytes = 4096;  // how far ahead of its use a weight line is fetched
constexpr int kMaxRows = 6;               // rows of x that share each weight load

// q + 128 and d of one block of 32 values
template <typename T>
inline void quantize_block(const T* src, uint8_t* dst, float* d) {
#if defined(__AVX512F__)
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>,
                "w8a8_linear takes bf16 or fp32 activations");
  __m512 lo, hi;
  if constexpr (std::is_same_v<T, float>) {
    lo = _mm512_loadu_ps(src), hi = _mm512_loadu_ps(src + 16);
  } else {
    lo = load_bf16(src), hi = load_bf16(src + 16);
  }
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
  const float scale = amax / 127.0f;
  *d = scale;
  if (!(scale > 0.0f)) {
    std::memset(dst, 128, kBlock);
    return;
  }
  // x / scale rounded to nearest even (IEEE division, as the scalar expression), clamped
  const __m512 s = _mm512_set1_ps(scale), top = _mm512_set1_ps(127.0f), bottom = _mm512_set1_ps(-127.0f);
  const __m512i offset = _mm512_set1_epi32(128);
  for (int half = 0; half < 2; ++half) {
    __m512 v = _mm512_roundscale_ps(_mm512_div_ps(half == 0 ? lo : hi, s),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(top, _mm512_max_ps(bottom, v));
    const __m512i u = _mm512_add_epi32(_mm512_cvtps_epi32(v), offset);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16 * half), _mm512_cvtepi32_epi8(u));
  }
#else
  float values[kBlock], amax = 0.0f;
  for (int64_t i = 0; i < kBlock; ++i) {
    values[i] = to_float(src[i]);
    amax = std::max(amax, std::fabs(values[i]));
  }
  const float scale = amax / 127.0f;
  *d = scale;
  for (int64_t i = 0; i < kBlock; ++i) {
    // nearbyint: the current rounding mode, nearest-even by default (as torch.round)
    float v = scale > 0.0f ? std::nearbyint(values[i] / scale) : 0.0f;
    v = std::min(127.0f, std::max(-127.0f, v));
    dst[i] = static_cast<uint8_t>(static_cast<int>(v) + 128);
  }
#endif
}

// q + 128 and d of each (row, block) of x. A block takes ~10 ns: a decode step's rows (a few
// hundred blocks) stay on the calling thread, which saves a fork and join per linear layer.
template <typename T>
void quantize_rows(const T* x, int64_t rows, int64_t k_size, uint8_t* q, float* d) {
  const int64_t blocks = k_size / kBlock;
  at::parallel_for(0, rows * blocks, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {  // rows are contiguous: item = m · blocks + b
      quantize_block(x + item * kBlock, q + item * kBlock, d + item);
    }
  });
}

// dst[j] = sums[j] · scales[j] (+ bias[j]): a multiply, then an add, each rounded (GCC
// contracts a multiply and an add into one fused multiply-add, intrinsics included)
inline void store_row_fp32(float* dst, const float* sums, int64_t width, const float* scales,
                           const float* bias) {
#if defined(__AVX512F__)
  for (int64_t j = 0; j < width; j += 16) {
    const __mmask16 mask = width - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (width - j)) - 1);
    __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, sums + j), _mm512_maskz_loadu_ps(mask, scales + j));
    asm("" : "+v"(v));  // the product rounded on its own: GCC would fuse it with the add
    if (bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias + j));
    _mm512_mask_storeu_ps(dst + j, mask, v);
  }
#else
  for (int64_t j = 0; j < width; ++j) {
    volatile float product = sums[j] * scales[j];
    dst[j] = bias != nullptr ? product + bias[j] : product;
  }
#endif
}

// Lines of the next tile that a later pass over this one fetches into L2: `count` lines from
// `begin`, `per_block` of them with each block of 32 k (nullptr: none)
struct NextTile {
  const char* begin = nullptr;
  int64_t count = 0, per_block = 0;
};

// sums[r · kTile + j] = acc of rows m0 + r (r < kR) and outputs 32t + j of one tile;
// kPrefetch: the first pass over the tile (the others find it in L1)
template <int kR, bool kPrefetch>
void tile_rows(const int8_t* __restrict__ w, const int32_t* __restrict__ offsets,
               const uint8_t* __restrict__ q, const float* __restrict__ d, int64_t k_size,
               float* __restrict__ sums, NextTile next) {
  const int64_t blocks = k_size / kBlock;
#if defined(__AVX512VNNI__)
  __m512 acc[kR][2];
  for (int r = 0; r < kR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    if constexpr (!kPrefetch) {
      for (int64_t i = 0, line = b * next.per_block; i < next.per_block && line < next.count; ++i, ++line) {
        _mm_prefetch(next.begin + line * 64, _MM_HINT_T1);
      }
    }
    const __m512i off0 = _mm512_loadu_si512(offsets + b * kTile);
    const __m512i off1 = _mm512_loadu_si512(offsets + b * kTile + 16);
    __m512i dot[kR][2];
    for (int r = 0; r < kR; ++r) dot[r][0] = off0, dot[r][1] = off1;
    const int8_t* wb = w + b * kBlock * kTile;
    for (int64_t s = 0; s < kBlock / 4; ++s) {
      // both lines of this step's weights kPrefetchBytes ahead (the hardware prefetcher alone
      // streamed them at ~50 GB/s on 2 cores, 70 reachable)
      if constexpr (kPrefetch) {
        const char* ahead = reinterpret_cast<const char*>(wb + s * 4 * kTile) + kPrefetchBytes;
        _mm_prefetch(ahead, _MM_HINT_T0);
        _mm_prefetch(ahead + 64, _MM_HINT_T0);
      }
      const __m512i w0 = _mm512_loadu_si512(wb + s * 4 * kTile);
      const __m512i w1 = _mm512_loadu_si512(wb + s * 4 * kTile + 64);
      for (int r = 0; r < kR; ++r) {
        int32_t four;
        std::memcpy(&four, q + r * k_size + b * kBlock + 4 * s, 4);
        const __m512i xb = _mm512_set1_epi32(four);
        dot[r][0] = _mm512_dpbusd_epi32(dot[r][0], xb, w0);
        dot[r][1] = _mm512_dpbusd_epi32(dot[r][1], xb, w1);
      }
    }
    for (int r = 0; r < kR; ++r) {
      const __m512 scale = _mm512_set1_ps(d[r * blocks + b]);
      acc[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][0]), scale, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][1]), scale, acc[r][1]);
    }
  }
  for (int r = 0; r < kR; ++r) {
    _mm512_storeu_ps(sums + r * kTile, acc[r][0]);
    _mm512_storeu_ps(sums + r * kTile + 16, acc[r][1]);
  }
#else  // the same sums in plain loops
  for (int r = 0; r < kR; ++r) {
    for (int64_t j = 0; j < kTile; ++j) {
      float acc = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t dot = offsets[b * kTile + j];
        for (int64_t i = 0; i < kBlock; ++i) {
          const int64_t k = b * kBlock + i;
          dot += static_cast<int32_t>(q[r * k_size + k]) * w[(k / 4) * 4 * kTile + j * 4 + k % 4];
        }
        acc = std::fma(static_cast<float>(dot), d[r * blocks + b], acc);
      }
      sums[r * kTile + j] = acc;
    }
  }
#endif
}

template <bool kPrefetch>
void rows_of_tile(int64_t count, const int8_t* tile, const int32_t* offsets, const uint8_t* q,
                  const float* d, int64_t k_size, float* sums, NextTile next) {
  switch (count) {
    case 1: tile_rows<1, kPrefetch>(tile, offsets, q, d, k_size, sums, next); break;
    case 2: tile_rows<2, kPrefetch>(tile, offsets, q, d, k_size, sums, next); break;
    case 3: tile_rows<3, kPrefetch>(tile, offsets, q, d, k_size, sums, next); break;
    case 4: tile_rows<4, kPrefetch>(tile, offsets, q, d, k_size, sums, next); break;
    case 5: tile_rows<5, kPrefetch>(tile, offsets, q, d, k_size, sums, next); break;
    default: tile_rows<6, kPrefetch>(tile, offsets, q, d, k_size, sums, next); break;
  }
}

// One row of a gate/up tile (w8a8_silu_mul): sums[0, 16) gate, [16, 32) up outputs 16t + j;
// dst[j] = silu_and_mul's result on the two layers' outputs, each rounding step as there:
// bf16: T(T(silu(T(g · sg))) · T(u · su)); fp32: silu(g · sg) · (u · su). bf16 rows with
// AVX512-BF16 go through store_silu_mul_rows' vector path instead.
template <typename T>
inline void store_silu_mul_row(T* dst, const float* sums, const float* scales) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    __m512 gate = _mm512_mul_ps(_mm512_loadu_ps(sums), _mm512_loadu_ps(scales));
    __m512 up = _mm512_mul_ps(_mm512_loadu_ps(sums + 16), _mm512_loadu_ps(scales + 16));
    asm("" : "+v"(gate), "+v"(up));  // each product rounded on its own, as when stored
    _mm512_storeu_ps(dst, _mm512_mul_ps(silu16(gate), up));
    return;
  }
#endif
  T gate_up[32];  // the two layers' outputs, as stored
  for (int64_t j = 0; j < 32; ++j) {
    volatile float product = sums[j] * scales[j];  // rounded on its own, as when stored
    gate_up[j] = static_cast<T>(product);
  }
  silu_mul_scalar(gate_up, gate_up + 16, dst, 0, 16);
}

// store_silu_mul_row of kR rows (sums kTile apart, dst rows `stride` apart); bf16 with
// AVX512-BF16: each step across all the rows before the next (silu16_n), the same bits as row
// by row, which waited on each row's exp/division chain (7.1 → 4.3 % of a 1,130-token prefill)
template <int kR, typename T>
inline void store_silu_mul_rows(T* dst, int64_t stride, const float* sums, const float* scales) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m512 gate_scales = _mm512_loadu_ps(scales), up_scales = _mm512_loadu_ps(scales + 16);
    __m512 gate[kR], up[kR];
    for (int r = 0; r < kR; ++r) {
      gate[r] = round_bf16(_mm512_mul_ps(_mm512_loadu_ps(sums + r * kTile), gate_scales));
      up[r] = round_bf16(_mm512_mul_ps(_mm512_loadu_ps(sums + r * kTile + 16), up_scales));
    }
    silu16_n<kR>(gate);
    for (int r = 0; r < kR; ++r) {
      const __m256bh out = _mm512_cvtneps_pbh(_mm512_mul_ps(round_bf16(gate[r]), up[r]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + r * stride), (__m256i)out);
    }
    return;
  }
#endif
  for (int r = 0; r < kR; ++r) store_silu_mul_row(dst + r * stride, sums + r * kTile, scales);
}

// kSiluMul: the weights are a gate/up pair interleaved by 16 (w8a8_silu_mul), out is (rows,
// n_size / 2) and each tile's row gives 16 outputs of silu(gate) · up
template <typename T, bool kSiluMul = false>
void w8a8_rows(const T* x, const int8_t* w, const int32_t* offsets, const float* scales,
               const T* bias, T* out, int64_t rows, int64_t k_size, int64_t n_size) {
  const int64_t blocks = k_size / kBlock, tiles = (n_size + kTile - 1) / kTile;
  // not value-initialised: a zero fill of 0.6-1.7 MB a layer at prefill ran serially before the
  // parallel quantization overwrote it
  const std::unique_ptr<uint8_t[]> q(new uint8_t[rows * k_size]);
  const std::unique_ptr<float[]> d(new float[rows * blocks]);
  quantize_rows(x, rows, k_size, q.get(), d.get());
  // the passes after the first over a tile (in L1 by then) fetch the next tile into L2, spread
  // over their blocks, so that its first pass does not wait on memory
  const int64_t passes = (rows + kMaxRows - 1) / kMaxRows, tile_lines = k_size * kTile / 64;
  const int64_t per_block =
      passes > 1 ? (tile_lines + (passes - 1) * blocks - 1) / ((passes - 1) * blocks) : 0;
  parallel_chunks(tiles, [&](int64_t begin, int64_t end) {
    alignas(64) float sums[kMaxRows * kTile];
    for (int64_t t = begin; t < end; ++t) {
      const int8_t* tile = w + t * k_size * kTile;
      const int32_t* tile_offsets = offsets + t * blocks * kTile;
      const int64_t n0 = t * kTile, width = std::min(kTile, n_size - n0);
      for (int64_t m0 = 0; m0 < rows; m0 += kMaxRows) {
        const int64_t count = std::min<int64_t>(kMaxRows, rows - m0);
        const uint8_t* qm = q.get() + m0 * k_size;
        const float* dm = d.get() + m0 * blocks;
        if (m0 == 0) {
          rows_of_tile<true>(count, tile, tile_offsets, qm, dm, k_size, sums, NextTile{});
        } else {
          NextTile next;
          if (t + 1 < end) {  // the next tile of this thread's chunk
            const int64_t first = (m0 / kMaxRows - 1) * blocks * per_block;
            next.begin = reinterpret_cast<const char*>(tile + k_size * kTile) + first * 64;
            next.count = std::max<int64_t>(0, std::min(tile_lines - first, blocks * per_block));
            next.per_block = per_block;
          }
          rows_of_tile<false>(count, tile, tile_offsets, qm, dm, k_size, sums, next);
        }
        if constexpr (kSiluMul) {
          T* dst = out + m0 * (n_size / 2) + n0 / 2;
          if (count == kMaxRows) {
            store_silu_mul_rows<kMaxRows>(dst, n_size / 2, sums, scales + n0);
          } else {
            for (int64_t r = 0; r < count; ++r) {
              store_silu_mul_rows<1>(dst + r * (n_size / 2), n_size / 2, sums + r * kTile, scales + n0);
            }
          }
          continue;
        }
        for (int64_t r = 0; r < count; ++r) {
          const float* row = sums + r * kTile;
          T* dst = out + (m0 + r) * n_size + n0;
          if constexpr (std::is_same_v<T, c10::BFloat16>) {
            store_row_bf16(dst, row, width, scales + n0, bias == nullptr ? nullptr : bias + n0);
          } else {
            store_row_fp32(dst, row, width, scales + n0, bias == nullptr ? nullptr : bias + n0);
          }
        }
      }
    }
  });
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> pack_w8a8(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kInt8,
              "weight must be an (N, K) int8 tensor");
  const int64_t n_size = weight.size(0), k_size = weight.size(1);
  TORCH_CHECK(k_size % kBlock == 0, "w8a8 needs K (", k_size, ") to be a multiple of ", kBlock);
  const int64_t tiles = (n_size + kTile - 1) / kTile, blocks = k_size / kBlock;
  auto padded = torch::zeros({tiles * kTile, k_size}, weight.options());
  padded.narrow(0, 0, n_size).copy_(weight);
  // (tiles, 32, K/4, 4) → (tiles, K/4, 32, 4)
  auto packed = huge_pages_copy(padded.view({tiles, kTile, k_size / 4, 4}).transpose(1, 2));
  // -128 · Σ of each output's weights over each block: (tiles, 32, blocks) → (tiles, blocks, 32)
  auto sums = padded.to(torch::kInt32).view({tiles, kTile, blocks, kBlock}).sum(-1) * -128;
  auto offsets = sums.to(torch::kInt32).transpose(1, 2).contiguous();
  return {packed, offsets};
}

namespace {

void check_w8a8(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& offsets,
                const torch::Tensor& scales) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous (M, K) tensor");
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kFloat,
              "x must be bf16 or fp32");
  const int64_t k_size = x.size(1), n_size = scales.numel();
  const int64_t tiles = (n_size + kTile - 1) / kTile;
  TORCH_CHECK(packed.dim() == 4 && packed.is_contiguous() && packed.scalar_type() == torch::kInt8 &&
                  packed.size(0) == tiles && packed.size(1) * 4 == k_size &&
                  packed.size(2) == kTile && packed.size(3) == 4,
              "packed must come from pack_w8a8 with K = x.size(1) and N = scales.numel()");
  TORCH_CHECK(offsets.dim() == 3 && offsets.is_contiguous() &&
                  offsets.scalar_type() == torch::kInt32 && offsets.size(0) == tiles &&
                  offsets.size(1) * kBlock == k_size && offsets.size(2) == kTile,
              "offsets must come from pack_w8a8");
  TORCH_CHECK(scales.dim() == 1 && scales.is_contiguous() && scales.scalar_type() == torch::kFloat,
              "scales must be a contiguous (N,) fp32 tensor");
}

}  // namespace

torch::Tensor w8a8_linear(const torch::Tensor& x, const torch::Tensor& packed,
                          const torch::Tensor& offsets, const torch::Tensor& scales,
                          const std::optional<torch::Tensor>& bias) {
  check_w8a8(x, packed, offsets, scales);
  const int64_t k_size = x.size(1), n_size = scales.numel();
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == n_size && bias->is_contiguous() &&
                    bias->scalar_type() == x.scalar_type(),
                "bias must be a contiguous (N,) tensor in x's dtype");
  }
  auto out = torch::empty({x.size(0), n_size}, x.options());
  if (x.size(0) == 0) return out;
  if (x.scalar_type() == torch::kBFloat16) {
    w8a8_rows<c10::BFloat16>(x.data_ptr<c10::BFloat16>(), packed.data_ptr<int8_t>(),
                             offsets.data_ptr<int32_t>(), scales.data_ptr<float>(),
                             bias.has_value() ? bias->data_ptr<c10::BFloat16>() : nullptr,
                             out.data_ptr<c10::BFloat16>(), x.size(0), k_size, n_size);
  } else {
    w8a8_rows<float>(x.data_ptr<float>(), packed.data_ptr<int8_t>(), offsets.data_ptr<int32_t>(),
                     scales.data_ptr<float>(), bias.has_value() ? bias->data_ptr<float>() : nullptr,
                     out.data_ptr<float>(), x.size(0), k_size, n_size);
  }
  return out;
}

torch::Tensor w8a8_silu_mul(const torch::Tensor& x, const torch::Tensor& packed,
                            const torch::Tensor& offsets, const torch::Tensor& scales) {
  check_w8a8(x, packed, offsets, scales);
  const int64_t k_size = x.size(1), n_size = scales.numel();
  TORCH_CHECK(n_size % kTile == 0, "w8a8_silu_mul needs 2 × a multiple of 16 outputs, got ", n_size);
  auto out = torch::empty({x.size(0), n_size / 2}, x.options());
  if (x.size(0) == 0) return out;
  if (x.scalar_type() == torch::kBFloat16) {
    w8a8_rows<c10::BFloat16, true>(x.data_ptr<c10::BFloat16>(), packed.data_ptr<int8_t>(),
                                   offsets.data_ptr<int32_t>(), scales.data_ptr<float>(), nullptr,
                                   out.data_ptr<c10::BFloat16>(), x.size(0), k_size, n_size);
  } else {
    w8a8_rows<float, true>(x.data_ptr<float>(), packed.data_ptr<int8_t>(),
                           offsets.data_ptr<int32_t>(), scales.data_ptr<float>(), nullptr,
                           out.data_ptr<float>(), x.size(0), k_size, n_size);
  }
  return out;
}
