// Causal attention of prefill chunks, bf16, on AVX512-BF16's pairwise dot products: flash
// attention, the scores of a step of 64 keys at a time, never the whole (n × m) matrix.
//   prefill_attention:       one request from position 0, over its own K/V (q, k, v rows);
//   paged_prefill_attention: several requests' chunks, each after its cached prefix (or from
//                            0), over K/V read from the paged cache's blocks in place.
// Both pack K/V the same way and run the same loops, so a request from position 0 gets the
// same bits from either.
//
// PyTorch's CPU SDPA takes ~12 ms a layer for SmolLM2's 1,130-token prompt on a 2-core AMD EPYC
// (126 GFLOP/s; 2/3 of the prompt's prefill); without AMX its bf16 products run as plain
// vector code. Here K and V of each KV head are first laid out for vdpbf16ps (K: per tile of
// 32 keys, pairs of head dims side by side for each key; V: pairs of keys side by side for each
// head dim); then per (KV head, block of 16 query positions) work item, kRows query rows at a
// time (positions × the group's query heads) run over the key steps up to the diagonal:
//   s = q·k in fp32 (bf16 products), masked above the diagonal;
//   online softmax in fp32, in log2 units: running max m of s · scale · log2(e), sum l;
//   p = 2^(s · scale · log2(e) - m); o and l rescaled by 2^(m_old - m_new);
//   o += bf16(p) · v (bf16 products, fp32 sums)
// and o / l rounded to bf16: the steps of SDPA's flash kernel (fp32 scores and softmax, bf16
// probabilities into the second product), in another order of additions. The score and PV
// sums of the kRows rows (24 zmm) stay in registers while a K or V load serves all the rows; o,
// the scores and the probabilities go through L1. A work item's row groups (48 rows at
// SmolLM2's 3 query heads per KV head) take each step of keys in turn, so the step's K and V
// (16 KB at D = 64) come from L2 once for all of them: one group at a time through all its
// steps re-read each KV head's 290 KB from L2 for every 6 rows, and stalled on those loads
// (3.3 → 2.3 ms a layer). 1,130 tokens, SmolLM2's heads: 2.2-2.6 ms a layer on 2 cores
// (~600 GFLOP/s, ~60% of vdpbf16ps' peak; the exponentials take ~30% of the time).
//
// prefill_attention: q (n, H, D), k and v (n, Hkv, D), bf16, any token stride (each token's
// heads side by side, each head contiguous); D 64 or 128, H a multiple of Hkv; scale > 0.
// paged_prefill_attention: q (T, H, D), the chunks' rows in request order; kv_cache (2,
// num_blocks, block_size, Hkv, D); block_table (B, max_blocks), kv_lens and q_lens (B,): request
// b's chunk is its last q_lens[b] of kv_lens[b] positions, the earlier ones already cached.
// Both return (rows, H, D) contiguous.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#if defined(__AVX512BF16__)
namespace {

constexpr int64_t kKeys = 32;       // keys per tile of K
constexpr int64_t kStep = 64;       // keys per softmax step (two tiles)
constexpr int64_t kPositions = 16;  // query positions per work item

// 2^t of 16 floats t ≤ 0 (-inf → 0): t = n + f, n = round(t), f in [-1/2, 1/2], 2^f by a
// degree-4 polynomial fitted for relative error on that interval (≤ 3e-6: the probabilities go
// into the PV products as bf16, whose rounding is 2e-3; a degree-6 one, ~1 ulp, took two more
// multiply-adds an exponential), 2^n by scalef. The scores go in pre-multiplied by
// scale · log2(e), so one fused multiply-subtract gives the exponent: 9 instructions for 16
// probabilities.
inline __m512 exp2_16(__m512 t) {
  t = _mm512_max_ps(t, _mm512_set1_ps(-151.0f));  // 2^-151 rounds to 0
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(9.582852013409138e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5906426161527634e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4024099111557007e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931241750717163e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// rows[i] ← column i of the 16 × 16 matrix of 32-bit elements whose rows they are
inline void transpose16(__m512i (&rows)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // 2 × 2 blocks of elements
    t[i] = _mm512_unpacklo_epi32(rows[i], rows[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(rows[i], rows[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 4 × 4 blocks
    for (int k = 0; k < 2; ++k) {  // t[i + k]: columns 2k, 2k + 1 of rows i, i + 1
      rows[i + 2 * k] = _mm512_unpacklo_epi64(t[i + k], t[i + 2 + k]);
      rows[i + 2 * k + 1] = _mm512_unpackhi_epi64(t[i + k], t[i + 2 + k]);
    }
  }
  // rows[i] now holds, in each 128-bit lane L, elements 4L..4L+3 of column c(i) of the 4 rows
  // of its group of 4; the lanes then gather across the groups
  for (int i = 0; i < 4; ++i) {  // 8 × 8 blocks: lanes (0, 2) and (1, 3) of groups g, g + 1
    for (int g = 0; g < 16; g += 8) {
      t[g + i] = _mm512_shuffle_i32x4(rows[g + i], rows[g + 4 + i], 0x88);
      t[g + 4 + i] = _mm512_shuffle_i32x4(rows[g + i], rows[g + 4 + i], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {
    rows[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    rows[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

// sums[r][i] += pair(r) · vectors[i] for each of the kRows rows: one bf16 pair of the row
// (two head dims of q, or the probabilities of two keys) broadcast against four vectors of
// pairs (32 keys of K, or 16 head dims of two V rows), 32 products each, fp32 sums
template <int kRows, typename Pair>
inline void pairs_times_vectors(__m512 (&sums)[kRows][4], const __m512bh (&vectors)[4],
                                const Pair& pair) {
  for (int r = 0; r < kRows; ++r) {
    const auto b = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair(r)));
    for (int i = 0; i < 4; ++i) sums[r][i] = _mm512_dpbf16_ps(sums[r][i], b, vectors[i]);
  }
}

// kRows query rows (ascending positions) and their running softmax: o (unnormalised output), l
// (denominators, 16 partial sums a row) and m (maxes in log2 units). o lives in L1, not in
// registers: the registers go to the 4·kRows independent score sums of a step (the products'
// latency needs many in flight) and to the PV sums of 64 head dims at a time.
template <int64_t kDim, int kRows>
struct RowGroup {
  static_assert(kRows <= 16, "the rows' maxes and rescales are one vector");
  alignas(64) float o[kRows][kDim];
  alignas(64) float l[kRows][16];
  alignas(64) float m[16];
  const uint32_t* q_rows[kRows];
  int64_t positions[kRows];
  c10::BFloat16* out_rows[kRows];
  int rows = 0;
  int64_t last_key = 0;  // the last row's position: rows go by position, then head

  void start() {
    _mm512_store_ps(m, _mm512_set1_ps(-std::numeric_limits<float>::infinity()));
    for (int r = 0; r < kRows; ++r) {
      for (int64_t i = 0; i < kDim; i += 16) _mm512_store_ps(o[r] + i, _mm512_setzero_ps());
      _mm512_store_ps(l[r], _mm512_setzero_ps());
    }
  }

  // one step of 64 keys from key0 (≤ last_key)
  void step(int64_t key0, const uint16_t* k_tiles, const uint32_t* v_pairs, float log2_scale) {
    constexpr int kPairs = kDim / 2;  // head-dim pairs in a q row
    alignas(64) float scores[kRows][kStep];
    alignas(64) uint32_t probs[kRows][kStep / 2];  // bf16 probabilities, pairs of keys
    alignas(64) float new_max[16] = {}, correction[16];
    const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    const __m512 log2_scales = _mm512_set1_ps(log2_scale);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // scores of the step's 64 keys (two tiles of K; zeros past the sequence, masked below)
    {
      const uint16_t* tile = k_tiles + (key0 / kKeys) * kPairs * kKeys * 2;
      const uint16_t* next = tile + kPairs * kKeys * 2;
      __m512 s[kRows][4];
      for (int r = 0; r < kRows; ++r) s[r][0] = s[r][1] = s[r][2] = s[r][3] = _mm512_setzero_ps();
      for (int p = 0; p < kPairs; ++p) {
        const __m512bh keys[4] = {(__m512bh)_mm512_loadu_si512(tile + p * kKeys * 2),
                                  (__m512bh)_mm512_loadu_si512(tile + p * kKeys * 2 + 32),
                                  (__m512bh)_mm512_loadu_si512(next + p * kKeys * 2),
                                  (__m512bh)_mm512_loadu_si512(next + p * kKeys * 2 + 32)};
        pairs_times_vectors<kRows>(s, keys, [&](int r) { return q_rows[r][p]; });
      }
      for (int r = 0; r < kRows; ++r) {
        for (int i = 0; i < 4; ++i) _mm512_store_ps(scores[r] + 16 * i, s[r][i]);
      }
    }
    // only steps that reach past the first row's position hold keys to mask
    if (key0 + kStep - 1 > positions[0]) {
      for (int r = 0; r < kRows; ++r) {  // keys above the row's position do not count
        const __m512i limit = _mm512_set1_epi32(static_cast<int>(positions[r] - key0));
        for (int i = 0; i < kStep / 16; ++i) {
          const __m512i keys = _mm512_add_epi32(lane, _mm512_set1_epi32(16 * i));
          _mm512_mask_store_ps(scores[r] + 16 * i, _mm512_cmpgt_epi32_mask(keys, limit), minus_inf);
        }
      }
    }
    // the running maxes in log2 units (scale > 0: the max of the scaled scores is the scaled
    // max), and the rescale of each row's sums, exp2(old max - new max), for all rows at once
    for (int r = 0; r < kRows; ++r) {
      const __m512 x = _mm512_max_ps(_mm512_max_ps(_mm512_load_ps(scores[r]), _mm512_load_ps(scores[r] + 16)),
                                     _mm512_max_ps(_mm512_load_ps(scores[r] + 32), _mm512_load_ps(scores[r] + 48)));
      new_max[r] = std::max(m[r], _mm512_reduce_max_ps(x) * log2_scale);
    }
    _mm512_store_ps(correction, exp2_16(_mm512_sub_ps(_mm512_load_ps(m), _mm512_load_ps(new_max))));
    _mm512_store_ps(m, _mm512_load_ps(new_max));
    for (int r = 0; r < kRows; ++r) {
      const __m512 shift = _mm512_set1_ps(m[r]);
      __m512 sum = _mm512_mul_ps(_mm512_load_ps(l[r]), _mm512_set1_ps(correction[r]));
      for (int i = 0; i < kStep / 32; ++i) {
        const __m512 e0 = exp2_16(_mm512_fmsub_ps(_mm512_load_ps(scores[r] + 32 * i), log2_scales, shift));
        const __m512 e1 = exp2_16(_mm512_fmsub_ps(_mm512_load_ps(scores[r] + 32 * i + 16), log2_scales, shift));
        sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
        // keys 0-15 and 16-31 as bf16: 32 bf16 = 16 pairs (2j, 2j + 1) in key order
        const __m512i both = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(e0));
        _mm512_store_si512(probs[r] + 16 * i, _mm512_inserti64x4(both, (__m256i)_mm512_cvtneps_pbh(e1), 1));
      }
      _mm512_store_ps(l[r], sum);
    }
    const int64_t pairs = std::min<int64_t>(kStep, last_key - key0 + 1 + 1) / 2;
    for (int64_t h = 0; h < kDim; h += 64) {  // o += p · v, 64 head dims at a time
      __m512 acc[kRows][4];
      for (int r = 0; r < kRows; ++r) {
        const __m512 c = _mm512_set1_ps(correction[r]);
        for (int i = 0; i < 4; ++i) acc[r][i] = _mm512_mul_ps(_mm512_load_ps(o[r] + h + 16 * i), c);
      }
      const uint32_t* v = v_pairs + (key0 / 2) * kDim + h;
      for (int64_t jp = 0; jp < pairs; ++jp) {
        const __m512bh values[4] = {(__m512bh)_mm512_loadu_si512(v + jp * kDim),
                                    (__m512bh)_mm512_loadu_si512(v + jp * kDim + 16),
                                    (__m512bh)_mm512_loadu_si512(v + jp * kDim + 32),
                                    (__m512bh)_mm512_loadu_si512(v + jp * kDim + 48)};
        pairs_times_vectors<kRows>(acc, values, [&](int r) { return probs[r][jp]; });
      }
      for (int r = 0; r < kRows; ++r) {
        for (int i = 0; i < 4; ++i) _mm512_store_ps(o[r] + h + 16 * i, acc[r][i]);
      }
    }
  }

  // o / l as bf16 into the output rows
  void finish() const {
    for (int r = 0; r < rows; ++r) {
      const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_load_ps(l[r])));
      for (int64_t i = 0; i < kDim; i += 16) {
        const __m256bh x = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_load_ps(o[r] + i), inv));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_rows[r] + i), (__m256i)x);
      }
    }
  }
};

// One sequence of a prefill: its new tokens are rows [row0, row0 + n) of q and of the output,
// at positions [start, start + n); each attends to the keys [0, its position].
struct Sequence {
  int64_t row0, n, start;
};

// The sequences' attention. key_row(s, j, g) / value_row(s, j, g): the kDim bf16 of key
// position j of sequence s, KV head g (any j < start + n).
template <int64_t kDim, typename KeyRow, typename ValueRow>
void prefill(const c10::BFloat16* qd, int64_t q_stride, int64_t heads, int64_t kv_heads,
             const std::vector<Sequence>& seqs, const KeyRow& key_row, const ValueRow& value_row,
             float scale, c10::BFloat16* od) {
  constexpr int kRows = 6;  // rows that share each K and V load: 24 sums in registers
  constexpr int64_t kPairs = kDim / 2;
  const int64_t group = heads / kv_heads;
  // per sequence, whole steps of 64 keys (the last step's keys past the end are zeros, and
  // masked); tile_start[s]: its first tile among all sequences' tiles
  std::vector<int64_t> tile_start(seqs.size() + 1, 0), tile_seq;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int64_t keys = seqs[s].start + seqs[s].n, padded = (keys + kStep - 1) / kStep * kStep;
    tile_start[s + 1] = tile_start[s] + padded / kKeys;
    tile_seq.insert(tile_seq.end(), padded / kKeys, static_cast<int64_t>(s));
  }
  const int64_t tiles = tile_start.back();
  // K: (Hkv, tiles, D/2, 32 keys) pairs of head dims; V: (Hkv, tiles · 16 key pairs, D) pairs
  // of keys; zeros past each sequence's end. One pass per (KV head, tile), over the threads.
  const std::unique_ptr<uint32_t[]> k_tiles(new uint32_t[kv_heads * tiles * kPairs * kKeys]);
  const std::unique_ptr<uint32_t[]> v_pairs(new uint32_t[kv_heads * tiles * (kKeys / 2) * kDim]);
  parallel_chunks(kv_heads * tiles, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / tiles, t = item % tiles, s = tile_seq[t];
      const int64_t key0 = (t - tile_start[s]) * kKeys, keys = seqs[s].start + seqs[s].n;
      // K: pair p of key j at p·32 + j, by 16 × 16 transposes of (key, pair) blocks
      uint32_t* kt = k_tiles.get() + item * kPairs * kKeys;
      for (int64_t j0 = 0; j0 < kKeys; j0 += 16) {
        const uint32_t* rows[16];
        for (int64_t j = 0; j < 16; ++j) {
          rows[j] = key0 + j0 + j < keys
                        ? reinterpret_cast<const uint32_t*>(key_row(s, key0 + j0 + j, g))
                        : nullptr;
        }
        for (int64_t p0 = 0; p0 < kPairs; p0 += 16) {
          __m512i block[16];
          for (int j = 0; j < 16; ++j) {
            block[j] = rows[j] != nullptr ? _mm512_loadu_si512(rows[j] + p0) : _mm512_setzero_si512();
          }
          transpose16(block);
          for (int p = 0; p < 16; ++p) _mm512_storeu_si512(kt + (p0 + p) * kKeys + j0, block[p]);
        }
      }
      // V pairs (2j, 2j + 1) of this tile's keys: dim d of both keys side by side
      uint32_t* vt = v_pairs.get() + item * (kKeys / 2) * kDim;
      for (int64_t jp = 0; jp < kKeys / 2; ++jp) {
        const int64_t key = key0 + 2 * jp;
        const auto* v0 = key < keys ? value_row(s, key, g) : nullptr;
        const auto* v1 = key + 1 < keys ? value_row(s, key + 1, g) : nullptr;
        for (int64_t d = 0; d < kDim; d += 16) {
          const __m512i lo = v0 != nullptr ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                                 reinterpret_cast<const __m256i*>(v0 + d)))
                                           : _mm512_setzero_si512();
          const __m512i hi = v1 != nullptr ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                                 reinterpret_cast<const __m256i*>(v1 + d)))
                                           : _mm512_setzero_si512();
          _mm512_storeu_si512(vt + jp * kDim + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
      }
    }
  });
  // work items: (sequence, block of 16 new positions) × KV head, the most keys first for the
  // chunked threads
  std::vector<std::pair<int64_t, int64_t>> blocks;  // (sequence, block)
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t b = 0; b * kPositions < seqs[s].n; ++b) blocks.emplace_back(s, b);
  }
  auto last_position = [&](const std::pair<int64_t, int64_t>& sb) {
    const Sequence& seq = seqs[sb.first];
    return seq.start + std::min(seq.n, (sb.second + 1) * kPositions) - 1;
  };
  std::stable_sort(blocks.begin(), blocks.end(), [&](const auto& a, const auto& b) {
    return last_position(a) > last_position(b);
  });
  const float log2_scale = scale * 1.44269504088896341f;  // exp(scale · s) = 2^(log2_scale · s)
  using Group = RowGroup<kDim, kRows>;
  // the row groups' states (12 KB at D = 64) and a step's K and V stay in L1 together
  constexpr int kGroups = kDim == 64 ? 8 : 4;
  parallel_chunks(kv_heads * static_cast<int64_t>(blocks.size()), [&](int64_t begin, int64_t end) {
    std::unique_ptr<Group[]> row_groups(new Group[kGroups]);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item % kv_heads;
      const auto [s, block] = blocks[item / kv_heads];
      const Sequence& seq = seqs[s];
      const int64_t i0 = block * kPositions, i1 = std::min(seq.n, i0 + kPositions);
      const int64_t count = (i1 - i0) * group;  // rows: (position, query head of the group)
      const uint32_t* k_head = k_tiles.get() + (g * tiles + tile_start[s]) * kPairs * kKeys;
      const uint32_t* v_head = v_pairs.get() + (g * tiles + tile_start[s]) * (kKeys / 2) * kDim;
      // the item's row groups go through the keys together, kGroups at a time: each step's K
      // and V (16 KB at D = 64) come from L2 once for all of them and serve the rest from L1
      for (int64_t first = 0; first < count; first += kGroups * kRows) {
        const int64_t last = std::min(count, first + kGroups * kRows);
        const int groups = static_cast<int>((last - first + kRows - 1) / kRows);
        int64_t last_key = 0;
        for (int gi = 0; gi < groups; ++gi) {
          Group& rg = row_groups[gi];
          const int64_t r0 = first + gi * kRows;
          rg.rows = static_cast<int>(std::min<int64_t>(kRows, count - r0));
          for (int r = 0; r < kRows; ++r) {
            const int64_t row = r0 + std::min(r, rg.rows - 1);  // padding rows repeat the last
            const int64_t i = i0 + row / group, head = g * group + row % group;
            rg.q_rows[r] = reinterpret_cast<const uint32_t*>(qd + (seq.row0 + i) * q_stride + head * kDim);
            rg.positions[r] = seq.start + i;
            rg.out_rows[r] = od + ((seq.row0 + i) * heads + head) * kDim;
          }
          rg.last_key = rg.positions[rg.rows - 1];
          last_key = std::max(last_key, rg.last_key);
          rg.start();
        }
        for (int64_t key0 = 0; key0 <= last_key; key0 += kStep) {
          for (int gi = 0; gi < groups; ++gi) {
            Group& rg = row_groups[gi];
            if (key0 <= rg.last_key) rg.step(key0, reinterpret_cast<const uint16_t*>(k_head), v_head, log2_scale);
          }
        }
        for (int gi = 0; gi < groups; ++gi) row_groups[gi].finish();
      }
    }
  });
}

template <int64_t kDim>
void contiguous_prefill(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        float scale, torch::Tensor& out) {
  const auto* kd = k.data_ptr<c10::BFloat16>();
  const auto* vd = v.data_ptr<c10::BFloat16>();
  const int64_t k_stride = k.stride(0), v_stride = v.stride(0);
  prefill<kDim>(q.data_ptr<c10::BFloat16>(), q.stride(0), q.size(1), k.size(1),
                {Sequence{0, q.size(0), 0}},
                [&](int64_t, int64_t j, int64_t g) { return kd + j * k_stride + g * kDim; },
                [&](int64_t, int64_t j, int64_t g) { return vd + j * v_stride + g * kDim; },
                scale, out.data_ptr<c10::BFloat16>());
}

template <int64_t kDim>
void paged_prefill(const torch::Tensor& q, const torch::Tensor& kv_cache,
                   const torch::Tensor& block_table, const std::vector<Sequence>& seqs,
                   float scale, torch::Tensor& out) {
  const int64_t block_size = kv_cache.size(2), kv_heads = kv_cache.size(3);
  const int64_t token_stride = kv_heads * kDim, plane = kv_cache.size(1) * block_size * token_stride;
  const auto* cache = kv_cache.data_ptr<c10::BFloat16>();
  const auto* table = block_table.data_ptr<int64_t>();
  const int64_t max_blocks = block_table.size(1);
  auto row = [&](int64_t s, int64_t j, int64_t g) {
    const int64_t slot = table[s * max_blocks + j / block_size] * block_size + j % block_size;
    return cache + slot * token_stride + g * kDim;
  };
  prefill<kDim>(q.data_ptr<c10::BFloat16>(), q.stride(0), q.size(1), kv_heads, seqs, row,
                [&](int64_t s, int64_t j, int64_t g) { return row(s, j, g) + plane; }, scale,
                out.data_ptr<c10::BFloat16>());
}

}  // namespace
#endif

bool prefill_attention_supported(const torch::Tensor& q, const torch::Tensor& k) {
#if defined(__AVX512BF16__)
  const int64_t dim = q.dim() == 3 ? q.size(2) : 0;
  return q.scalar_type() == torch::kBFloat16 && (dim == 64 || dim == 128) && k.dim() == 3 &&
         k.size(2) == dim && q.size(1) % k.size(1) == 0;
#else
  return false;
#endif
}

torch::Tensor prefill_attention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, double scale) {
  TORCH_CHECK(prefill_attention_supported(q, k),
              "prefill_attention needs bf16 q (n, H, D) with D 64 or 128 and k (n, Hkv, D)");
  TORCH_CHECK(v.sizes() == k.sizes() && v.scalar_type() == q.scalar_type() &&
                  k.scalar_type() == q.scalar_type() && k.size(0) == q.size(0),
              "k and v must be (n, Hkv, D) tensors of q's dtype");
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->stride(2) == 1 && t->stride(1) == t->size(2),
                "each token's heads must lie side by side, each head contiguous");
  }
  TORCH_CHECK(scale > 0.0, "prefill_attention needs a positive scale, got ", scale);
  auto out = torch::empty({q.size(0), q.size(1), q.size(2)}, q.options());
#if defined(__AVX512BF16__)
  if (q.size(0) == 0) return out;
  const float s = static_cast<float>(scale);
  if (q.size(2) == 64) {
    contiguous_prefill<64>(q, k, v, s, out);
  } else {
    contiguous_prefill<128>(q, k, v, s, out);
  }
#endif
  return out;
}

torch::Tensor paged_prefill_attention(const torch::Tensor& q, const torch::Tensor& kv_cache,
                                      const torch::Tensor& block_table,
                                      const torch::Tensor& kv_lens, const torch::Tensor& q_lens,
                                      double scale) {
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2 && kv_cache.is_contiguous(),
              "kv_cache must be a contiguous (2, num_blocks, block_size, Hkv, D) tensor");
  TORCH_CHECK(q.dim() == 3 && prefill_attention_supported(q, kv_cache[0][0]),
              "paged_prefill_attention needs bf16 q (T, H, D) with D 64 or 128, H a multiple of "
              "the cache's Hkv, and a cache of the same D");
  TORCH_CHECK(kv_cache.scalar_type() == q.scalar_type(), "q and kv_cache dtypes differ");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2),
              "each token's heads must lie side by side, each head contiguous");
  const int64_t batch = block_table.dim() == 2 ? block_table.size(0) : -1;
  TORCH_CHECK(block_table.scalar_type() == torch::kInt64 && block_table.is_contiguous() && batch >= 0,
              "block_table must be a contiguous (B, max_blocks) int64 tensor");
  for (const auto* t : {&kv_lens, &q_lens}) {
    TORCH_CHECK(t->scalar_type() == torch::kInt64 && t->is_contiguous() && t->dim() == 1 &&
                    t->numel() == batch,
                "kv_lens and q_lens must be contiguous (B,) int64 tensors");
  }
  TORCH_CHECK(scale > 0.0, "paged_prefill_attention needs a positive scale, got ", scale);
  const int64_t block_size = kv_cache.size(2), num_blocks = kv_cache.size(1);
  const int64_t* kv = kv_lens.data_ptr<int64_t>();
  const int64_t* ql = q_lens.data_ptr<int64_t>();
  const int64_t* table = block_table.data_ptr<int64_t>();
  std::vector<Sequence> seqs;
  int64_t rows = 0;
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(ql[b] >= 1 && ql[b] <= kv[b] && kv[b] <= block_table.size(1) * block_size,
                "request ", b, ": q_len ", ql[b], " and kv_len ", kv[b],
                " need 1 <= q_len <= kv_len <= the table's blocks × block_size");
    for (int64_t i = 0; i < (kv[b] + block_size - 1) / block_size; ++i) {
      const int64_t block = table[b * block_table.size(1) + i];
      TORCH_CHECK(block >= 0 && block < num_blocks, "block ", block, " out of range [0, ", num_blocks, ")");
    }
    seqs.push_back(Sequence{rows, ql[b], kv[b] - ql[b]});
    rows += ql[b];
  }
  TORCH_CHECK(rows == q.size(0), "q has ", q.size(0), " rows, q_lens sum to ", rows);
  auto out = torch::empty({q.size(0), q.size(1), q.size(2)}, q.options());
#if defined(__AVX512BF16__)
  if (rows == 0) return out;
  const float s = static_cast<float>(scale);
  if (q.size(2) == 64) {
    paged_prefill<64>(q, kv_cache, block_table, seqs, s, out);
  } else {
    paged_prefill<128>(q, kv_cache, block_table, seqs, s, out);
  }
#endif
  return out;
}
