// Int8 weight-only matrix-vector products for decode (a few rows of activations).
//
// Decode at batch 1 reads every weight once per token, so its speed is the memory bandwidth
// divided by the weight bytes. PyTorch's `_weight_int8pack_mm` is compute-bound on these CPUs
// (it reached ~11 GB/s of int8 on SmolLM2-135M's layers, half of what the memory gives). Here
// the weights are laid out so that each thread streams its tiles front to back:
//
//   pack_int8(w: (N, K) int8) → (ceil(N / 32), K, 32) int8: tile t holds outputs
//   [32t, 32t + 32), for each k the 32 weights of those outputs side by side (zero padded)
//
// int8_linear(x (M, K), packed, scales (N,) fp32, bias?) → (M, N) in x's dtype:
//   out[m, n] = T(scales[n] · Σ_k float(w[n, k]) · float(x[m, k]) + bias[n])
// with fp32 accumulation: each group of 16 int8 weights is widened to fp32 once and used by up
// to 4 rows of x. Tiles are taken in chunks by PyTorch's intra-op threads.
#include "kernels.h"

#include <ATen/Parallel.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kTile = kTileWidth;  // outputs per tile (kernels.h): two 16-lane sums
// Software prefetch this many k rows (4 KiB) ahead of the loads: SmolLM2-135M's 120 layer
// matmuls at batch 1 took 7.2 ms without it, 6.4 / 4.4 / 3.6 / 4.1 ms at 8 / 64 / 128 / 256
// rows ahead (3.6 ms is 30 GB/s, what a plain streaming read of the same bytes reaches here).
constexpr int64_t kPrefetchRows = 128;
// bf16 x of kAmxMinRows..kAmxMaxRows rows takes AMX's tile products where the CPU has them
constexpr int64_t kAmxMinRows = 3, kAmxMaxRows = 64;

#if defined(__AVX512F__)
inline __m512 widen(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// acc[m][0..1] += w[k] · x[m][k] over k in [0, K) for one tile; kM rows.
template <int kM>
void tile_dot(const int8_t* __restrict__ w, const float* __restrict__ x, int64_t k_size,
              float* __restrict__ out) {
  __m512 acc[kM][4];
  for (int m = 0; m < kM; ++m) {
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 2 <= k_size; k += 2) {
    const int8_t* p = w + k * kTile;
    _mm_prefetch(reinterpret_cast<const char*>(p + 256 * kTile), _MM_HINT_T0);
    const __m512 w00 = widen(p), w01 = widen(p + 16);
    const __m512 w10 = widen(p + kTile), w11 = widen(p + kTile + 16);
    for (int m = 0; m < kM; ++m) {
      const __m512 x0 = _mm512_set1_ps(x[m * k_size + k]);
      const __m512 x1 = _mm512_set1_ps(x[m * k_size + k + 1]);
      acc[m][0] = _mm512_fmadd_ps(w00, x0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(w01, x0, acc[m][1]);
      acc[m][2] = _mm512_fmadd_ps(w10, x1, acc[m][2]);
      acc[m][3] = _mm512_fmadd_ps(w11, x1, acc[m][3]);
    }
  }
  for (; k < k_size; ++k) {
    const int8_t* p = w + k * kTile;
    const __m512 w0 = widen(p), w1 = widen(p + 16);
    for (int m = 0; m < kM; ++m) {
      const __m512 x0 = _mm512_set1_ps(x[m * k_size + k]);
      acc[m][0] = _mm512_fmadd_ps(w0, x0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(w1, x0, acc[m][1]);
    }
  }
  for (int m = 0; m < kM; ++m) {
    _mm512_storeu_ps(out + m * kTile, _mm512_add_ps(acc[m][0], acc[m][2]));
    _mm512_storeu_ps(out + m * kTile + 16, _mm512_add_ps(acc[m][1], acc[m][3]));
  }
}

#else  // no AVX-512: the same sums in plain loops (the compiler vectorizes what it can)
template <int kM>
void tile_dot(const int8_t* __restrict__ w, const float* __restrict__ x, int64_t k_size,
              float* __restrict__ out) {
  for (int64_t i = 0; i < kM * kTile; ++i) out[i] = 0.0f;
  for (int64_t k = 0; k < k_size; ++k) {
    for (int m = 0; m < kM; ++m) {
      const float xv = x[m * k_size + k];
      for (int64_t j = 0; j < kTile; ++j) out[m * kTile + j] += static_cast<float>(w[k * kTile + j]) * xv;
    }
  }
}
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__)
// AMX path for bf16 x, 3-64 rows, K a multiple of 32: each 32-k slab of a tile is widened to
// bf16 (int8 values are exact in bf16) into AMX's pair layout in a 2 KiB scratch, then
// multiplied by tile products (tdpbf16ps: bf16 products, fp32 sums), 32 rows of x a pass. It
// streams int8 weights like the vector path, with one widening per weight for all rows.
//
// Scratch row p of half h: the 16 outputs 16h..16h+15, each as (w[k0 + 2p], w[k0 + 2p + 1]).
inline void widen_slab(const int8_t* w, uint16_t* scratch) {
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int p = 0; p < 16; ++p) {
    const int8_t* row = w + 2 * p * kTile;
    _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchRows * kTile), _MM_HINT_T0);
    for (int h = 0; h < 2; ++h) {
      const __m512i even = _mm512_castps_si512(widen(row + 16 * h));
      const __m512i odd = _mm512_castps_si512(widen(row + kTile + 16 * h));
      // bf16 of an exact float = its top 16 bits: (even's top half, odd's top half) per output
      const __m512i pairs = _mm512_or_si512(_mm512_srli_epi32(even, 16), _mm512_and_si512(odd, high));
      _mm512_store_si512(scratch + h * 512 + p * 32, pairs);
    }
  }
}

// sums (16·kA rows × 32, row stride 32) = x rows (bf16 pairs, stride `pairs`) · int8 tile
template <int kA>
void amx_int8_tile(const int8_t* w, const uint32_t* x, int64_t k_size, float* sums) {
  const int64_t pairs = k_size / 2;
  alignas(64) uint16_t scratch[2 * 512];
  AmxTiles::zero<kA>();
  for (int64_t k0 = 0; k0 < k_size; k0 += 32) {
    widen_slab(w + k0 * kTile, scratch);
    _tile_loadd(6, scratch, 64);
    _tile_loadd(7, scratch + 512, 64);
    AmxTiles::multiply<kA>(x + k0 / 2, pairs * 4);
  }
  AmxTiles::store<kA>(sums);
}
#endif

template <typename T>
void int8_rows(const T* __restrict__ x, const int8_t* __restrict__ w,
               const float* __restrict__ scales, const T* __restrict__ bias, T* __restrict__ out,
               int64_t rows, int64_t k_size, int64_t n_size) {
  auto store = [&](int64_t m, int64_t n0, int64_t width, const float* sums) {
    T* dst = out + m * n_size + n0;
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      store_row_bf16(dst, sums, width, scales + n0, bias == nullptr ? nullptr : bias + n0);
      return;
    }
    for (int64_t j = 0; j < width; ++j) {
      float value = sums[j] * scales[n0 + j];
      if (bias != nullptr) value += to_float(bias[n0 + j]);
      dst[j] = static_cast<T>(value);
    }
  };
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (rows >= kAmxMinRows && rows <= kAmxMaxRows && k_size % 32 == 0 && amx_bf16_available()) {
      const int64_t pairs = k_size / 2;
      std::vector<uint32_t> xp((rows + 15) / 16 * 16 * pairs, 0);  // rows padded to 16, zeros
      std::memcpy(xp.data(), x, rows * k_size * sizeof(T));
      auto amx_dot = [&](int64_t t, int64_t m0, bool two, float* sums) {
        const int8_t* tile = w + t * k_size * kTile;
        const uint32_t* xm = xp.data() + m0 * pairs;
        two ? amx_int8_tile<2>(tile, xm, k_size, sums) : amx_int8_tile<1>(tile, xm, k_size, sums);
      };
      for_each_tile_amx(rows, n_size, amx_dot, store);
      return;
    }
  }
#endif
  std::vector<float> xf(rows * k_size);
  for (int64_t i = 0; i < rows * k_size; ++i) xf[i] = to_float(x[i]);
  auto dot = [&](int64_t t, int64_t m0, int64_t count, float* sums) {
    const int8_t* tile = w + t * k_size * kTile;
    const float* xs = xf.data() + m0 * k_size;
    switch (count) {  // up to kTileRows rows share each widened weight vector
      case 1: tile_dot<1>(tile, xs, k_size, sums); break;
      case 2: tile_dot<2>(tile, xs, k_size, sums); break;
      case 3: tile_dot<3>(tile, xs, k_size, sums); break;
      default: tile_dot<4>(tile, xs, k_size, sums); break;
    }
  };
  for_each_tile(rows, n_size, dot, store);
}

}  // namespace

torch::Tensor pack_int8(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kInt8,
              "weight must be an (N, K) int8 tensor");
  const int64_t n_size = weight.size(0), k_size = weight.size(1);
  const int64_t tiles = (n_size + kTile - 1) / kTile;
  auto padded = torch::zeros({tiles * kTile, k_size}, weight.options());
  padded.narrow(0, 0, n_size).copy_(weight);
  // (tiles, K, 32), on huge pages: decode streams these bytes every step (huge_pages.cpp)
  return huge_pages_copy(padded.view({tiles, kTile, k_size}).transpose(1, 2));
}

torch::Tensor int8_linear(const torch::Tensor& x, const torch::Tensor& packed,
                          const torch::Tensor& scales, const std::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous (M, K) tensor");
  TORCH_CHECK(packed.dim() == 3 && packed.is_contiguous() && packed.size(2) == kTile &&
                  packed.scalar_type() == torch::kInt8 && packed.size(1) == x.size(1),
              "packed must come from pack_int8 with K = x.size(1)");
  const int64_t n_size = scales.numel();
  TORCH_CHECK(scales.dim() == 1 && scales.is_contiguous() &&
                  scales.scalar_type() == torch::kFloat &&
                  (n_size + kTile - 1) / kTile == packed.size(0),
              "scales must be a contiguous (N,) fp32 tensor matching packed");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == n_size && bias->is_contiguous() &&
                    bias->scalar_type() == x.scalar_type(),
                "bias must be a contiguous (N,) tensor in x's dtype");
  }
  auto out = torch::empty({x.size(0), n_size}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::BFloat16, at::ScalarType::Half, x.scalar_type(), "int8_linear", [&] {
        int8_rows<scalar_t>(x.data_ptr<scalar_t>(), packed.data_ptr<int8_t>(),
                            scales.data_ptr<float>(),
                            bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr,
                            out.data_ptr<scalar_t>(), x.size(0), x.size(1), n_size);
      });
  return out;
}
