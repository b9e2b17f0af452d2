// bf16 matrix-vector products for decode (a few rows of activations).
//
// oneDNN's packed bf16 matmul reads SmolLM2-135M's 120 layer weights at ~16 GB/s at batch 1
// (13.4 ms); a plain streaming read of the same bytes reaches ~30 GB/s here. This kernel
// streams weights laid out for AVX512-BF16's pairwise dot product, with software prefetch:
//
//   pack_bf16(w: (N, K) bf16) → (ceil(N / 32), ceil(K / 2), 32, 2) bf16: tile t holds outputs
//   [32t, 32t + 32); for each pair of k, the two weights of each output side by side
//
// bf16_linear(x (M, K) bf16, packed, bias?) → (M, N) bf16:
//   out[m, n] = bf16(Σ_k w[n, k] · x[m, k] + bias[n]), products and sums in fp32
// (vdpbf16ps: each instruction adds 32 products into 16 fp32 sums). Up to 4 rows share each
// weight load. Tiles are taken in chunks by PyTorch's intra-op threads.
//
// From kAmxMinRows rows, where the CPU has AMX and K is a multiple of 32, the same layout feeds
// AMX's tile products instead (tdpbf16ps: a 16×32 by 32×16 product per instruction), 32 rows of
// x a pass. oneDNN at 3-32 rows reads the weights at ~11-14 GB/s; this path at ~18 GB/s, the
// speed of 1 row (SmolLM2-135M's 121 matmuls at 16 rows: 15.0 against 20.1 ms, one run). At 64
// rows they tie alone; above, oneDNN (`models/layers/linear.py: AMX_MAX_ROWS`).
#include "kernels.h"

#include <ATen/Parallel.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kTile = kTileWidth;  // outputs per tile (kernels.h)
constexpr int64_t kPrefetchPairs = 32;  // 4 KiB ahead, as in linear_int8.cpp
// From this many rows on, AMX's tile products where the CPU has them (vdpbf16ps below)
constexpr int64_t kAmxMinRows = 3;

// sums[m][j] = Σ_p w[p][j] · x[m][p] for one tile; x as packed bf16 pairs (uint32 each).
template <int kM>
void tile_dot(const uint16_t* __restrict__ w, const uint32_t* __restrict__ x, int64_t pairs,
              float* __restrict__ sums) {
#if defined(__AVX512BF16__)
  __m512 acc[kM][4];
  for (int m = 0; m < kM; ++m) {
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
  }
  constexpr int64_t kStride = kTile * 2;  // bf16 elements per pair row
  int64_t p = 0;
  for (; p + 2 <= pairs; p += 2) {
    const uint16_t* row = w + p * kStride;
    _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchPairs * kStride), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchPairs * kStride + 64), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchPairs * kStride + 128), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchPairs * kStride + 192), _MM_HINT_T0);
    const auto w00 = (__m512bh)_mm512_loadu_si512(row);
    const auto w01 = (__m512bh)_mm512_loadu_si512(row + 32);
    const auto w10 = (__m512bh)_mm512_loadu_si512(row + kStride);
    const auto w11 = (__m512bh)_mm512_loadu_si512(row + kStride + 32);
    for (int m = 0; m < kM; ++m) {
      const auto x0 = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[m * pairs + p]));
      const auto x1 = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[m * pairs + p + 1]));
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], w00, x0);
      acc[m][1] = _mm512_dpbf16_ps(acc[m][1], w01, x0);
      acc[m][2] = _mm512_dpbf16_ps(acc[m][2], w10, x1);
      acc[m][3] = _mm512_dpbf16_ps(acc[m][3], w11, x1);
    }
  }
  for (; p < pairs; ++p) {
    const uint16_t* row = w + p * kStride;
    const auto w0 = (__m512bh)_mm512_loadu_si512(row);
    const auto w1 = (__m512bh)_mm512_loadu_si512(row + 32);
    for (int m = 0; m < kM; ++m) {
      const auto x0 = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[m * pairs + p]));
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], w0, x0);
      acc[m][1] = _mm512_dpbf16_ps(acc[m][1], w1, x0);
    }
  }
  for (int m = 0; m < kM; ++m) {
    _mm512_storeu_ps(sums + m * kTile, _mm512_add_ps(acc[m][0], acc[m][2]));
    _mm512_storeu_ps(sums + m * kTile + 16, _mm512_add_ps(acc[m][1], acc[m][3]));
  }
#else  // no AVX512-BF16: the same sums in plain loops
  auto widen = [](uint16_t bits) { return to_float(c10::BFloat16(bits, c10::BFloat16::from_bits())); };
  for (int64_t i = 0; i < kM * kTile; ++i) sums[i] = 0.0f;
  for (int64_t p = 0; p < pairs; ++p) {
    for (int m = 0; m < kM; ++m) {
      const uint32_t pair = x[m * pairs + p];
      const float x0 = widen(static_cast<uint16_t>(pair & 0xffff)), x1 = widen(static_cast<uint16_t>(pair >> 16));
      for (int64_t j = 0; j < kTile; ++j) {
        const uint16_t* wj = w + (p * kTile + j) * 2;
        sums[m * kTile + j] += widen(wj[0]) * x0 + widen(wj[1]) * x1;
      }
    }
  }
#endif
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
// AMX: the CPU multiplies 16×32 bf16 tiles of x by 32×16 tiles of weights into 16×16 fp32 tiles
// (tdpbf16ps), a whole tile per instruction (kernels.h: AmxTiles). The pack_bf16 layout is
// already AMX's: a 16-pair slab of a weight tile is two B tiles (columns 0-15 and 16-31) at a
// row stride of 128 bytes.
// Linux hands out AMX's register state only on request, once per process.
bool amx_permitted() {
  static const bool permitted = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return permitted;
}

// sums (16·kA rows × 32, row stride 32) = x rows (16·kA, pairs; stride `pairs`) · tile;
// pairs is a multiple of 16.
template <int kA>
void amx_tile_dot(const uint16_t* w, const uint32_t* x, int64_t pairs, float* sums) {
  AmxTiles::zero<kA>();
  for (int64_t p = 0; p < pairs; p += 16) {
    const uint16_t* b = w + p * kTile * 2;
    const char* ahead = reinterpret_cast<const char*>(b + kPrefetchPairs * kTile * 2);
    for (int line = 0; line < 32; ++line) _mm_prefetch(ahead + line * 64, _MM_HINT_T0);
    _tile_loadd(6, b, kTile * 4);
    _tile_loadd(7, b + 32, kTile * 4);
    AmxTiles::multiply<kA>(x + p, pairs * 4);
  }
  AmxTiles::store<kA>(sums);
}
#endif
}  // namespace

bool amx_bf16_available() {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  return amx_permitted();
#else
  return false;
#endif
}

torch::Tensor pack_bf16(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kBFloat16,
              "weight must be an (N, K) bf16 tensor");
  const int64_t n_size = weight.size(0), k_size = weight.size(1);
  const int64_t tiles = (n_size + kTile - 1) / kTile, pairs = (k_size + 1) / 2;
  auto padded = torch::zeros({tiles * kTile, pairs * 2}, weight.options());
  padded.narrow(0, 0, n_size).narrow(1, 0, k_size).copy_(weight);
  // (tiles, 32, pairs, 2) → (tiles, pairs, 32, 2)
  // on huge pages: decode streams these bytes every step (huge_pages.cpp)
  return huge_pages_copy(padded.view({tiles, kTile, pairs, 2}).transpose(1, 2));
}

torch::Tensor bf16_linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t out_features,
                          const std::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::kBFloat16,
              "x must be a contiguous (M, K) bf16 tensor");
  const int64_t rows = x.size(0), k_size = x.size(1), pairs = (k_size + 1) / 2;
  TORCH_CHECK(packed.dim() == 4 && packed.is_contiguous() && packed.size(2) == kTile &&
                  packed.size(3) == 2 && packed.scalar_type() == torch::kBFloat16 &&
                  packed.size(1) == pairs &&
                  (out_features + kTile - 1) / kTile == packed.size(0),
              "packed must come from pack_bf16 with K = x.size(1) and N = out_features");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == out_features && bias->is_contiguous() &&
                    bias->scalar_type() == torch::kBFloat16,
                "bias must be a contiguous (N,) bf16 tensor");
  }
  // x as bf16 pairs, the odd K's last pair padded with zero; rows padded to AMX's 16 with zeros
  const bool amx = rows >= kAmxMinRows && pairs % 16 == 0 && amx_bf16_available();
  const int64_t padded_rows = amx ? (rows + 15) / 16 * 16 : rows;
  std::vector<uint32_t> xp(padded_rows * pairs, 0);
  const auto* xs = reinterpret_cast<const uint16_t*>(x.data_ptr<c10::BFloat16>());
  for (int64_t m = 0; m < rows; ++m) {
    auto* dst = reinterpret_cast<uint16_t*>(xp.data() + m * pairs);
    std::copy(xs + m * k_size, xs + (m + 1) * k_size, dst);
  }
  auto out = torch::empty({rows, out_features}, x.options());
  auto* dst = out.data_ptr<c10::BFloat16>();
  const auto* w = reinterpret_cast<const uint16_t*>(packed.data_ptr<c10::BFloat16>());
  const c10::BFloat16* b = bias.has_value() ? bias->data_ptr<c10::BFloat16>() : nullptr;
  auto dot = [&](int64_t t, int64_t m0, int64_t count, float* sums) {
    const uint16_t* tile = w + t * pairs * kTile * 2;
    const uint32_t* xm = xp.data() + m0 * pairs;
    switch (count) {  // up to kTileRows rows share each weight load
      case 1: tile_dot<1>(tile, xm, pairs, sums); break;
      case 2: tile_dot<2>(tile, xm, pairs, sums); break;
      case 3: tile_dot<3>(tile, xm, pairs, sums); break;
      default: tile_dot<4>(tile, xm, pairs, sums); break;
    }
  };
  auto store = [&](int64_t m, int64_t n0, int64_t width, const float* sums) {
    store_row_bf16(dst + m * out_features + n0, sums, width, nullptr, b == nullptr ? nullptr : b + n0);
  };
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  if (amx) {
    auto amx_dot = [&](int64_t t, int64_t m0, bool two, float* sums) {
      const uint16_t* tile = w + t * pairs * kTile * 2;
      const uint32_t* xm = xp.data() + m0 * pairs;
      two ? amx_tile_dot<2>(tile, xm, pairs, sums) : amx_tile_dot<1>(tile, xm, pairs, sums);
    };
    for_each_tile_amx(rows, out_features, amx_dot, store);
    return out;
  }
#endif
  for_each_tile(rows, out_features, dot, store);
  return out;
}
