// Tensors on 2 MiB pages, for the bytes that every decode step streams through (tiled weights,
// the KV cache).
//
// Linux hands out transparent huge pages only where they are asked for (THP "madvise" mode, the
// default here). On 4 KiB pages, streaming SmolLM2-135M's 268 MB of bf16 weights misses the TLB
// on every page and the hardware prefetchers stop at each page's end: AMX's tile loads read
// them at ~19 GB/s (16 rows) and plain loads at ~26 GB/s; on 2 MiB pages at ~28 and ~33 GB/s.
//
// Tensors are carved from 64 MiB arenas (one mapping each, madvise(MADV_HUGEPAGE)), 64-byte
// aligned, so a model's ~200 weight tensors share pages instead of each rounding up to 2 MiB;
// larger tensors get a mapping of their own. An arena is unmapped when its last tensor dies.
// Where the kernel gives no huge pages (THP off) these are ordinary pages: nothing else changes.
#include "kernels.h"

#include <sys/mman.h>

#include <mutex>

namespace {

constexpr int64_t kHugePage = int64_t{2} << 20, kArenaBytes = int64_t{64} << 20;

struct Mapping {
  void* base = nullptr;
  int64_t bytes = 0;
  ~Mapping() {
    if (base != nullptr) munmap(base, bytes);
  }
};

// `bytes` (a multiple of 2 MiB) at a 2 MiB boundary, huge pages asked for
std::shared_ptr<Mapping> map_huge(int64_t bytes) {
  const int64_t padded = bytes + kHugePage;
  void* raw = mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(raw != MAP_FAILED, "mmap of ", padded, " bytes failed");
  // keep the aligned middle, give back the ends
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + padded, aligned_end = aligned + bytes;
  if (end > aligned_end) munmap(reinterpret_cast<void*>(aligned_end), end - aligned_end);
  auto mapping = std::make_shared<Mapping>();
  mapping->base = reinterpret_cast<void*>(aligned);
  mapping->bytes = bytes;
  madvise(mapping->base, bytes, MADV_HUGEPAGE);  // advice: failure leaves ordinary pages
  return mapping;
}

struct Arena {
  std::mutex mutex;
  std::shared_ptr<Mapping> current;
  int64_t used = 0;
};

Arena& arena() {
  static Arena instance;
  return instance;
}

}  // namespace

torch::Tensor huge_pages_empty(const std::vector<int64_t>& sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (const int64_t size : sizes) {
    TORCH_CHECK(size >= 0, "negative size ", size);
    numel *= size;
  }
  const int64_t bytes = std::max<int64_t>(64, (numel * c10::elementSize(dtype) + 63) / 64 * 64);
  std::shared_ptr<Mapping> mapping;
  void* data = nullptr;
  if (bytes > kArenaBytes / 4) {
    mapping = map_huge((bytes + kHugePage - 1) / kHugePage * kHugePage);
    data = mapping->base;
  } else {
    Arena& pool = arena();
    const std::lock_guard<std::mutex> lock(pool.mutex);
    if (pool.current == nullptr || pool.used + bytes > kArenaBytes) {
      pool.current = map_huge(kArenaBytes);
      pool.used = 0;
    }
    mapping = pool.current;
    data = static_cast<char*>(mapping->base) + pool.used;
    pool.used += bytes;
  }
  // the tensor holds its mapping: the last tensor of an arena unmaps it
  return torch::from_blob(
      data, sizes, [mapping](void*) mutable { mapping.reset(); },
      torch::TensorOptions().dtype(dtype).device(torch::kCPU));
}

torch::Tensor huge_pages_copy(const torch::Tensor& tensor) {
  TORCH_CHECK(tensor.device().is_cpu(), "huge_pages_copy takes CPU tensors");
  auto out = huge_pages_empty(tensor.sizes().vec(), tensor.scalar_type());
  out.copy_(tensor);
  return out;
}
