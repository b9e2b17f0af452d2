"""The KV block pool, the per-request block tables, and the automatic prefix cache.

Owns block ids, their reference counts and their content hashes; nothing outside this module
touches them. The tensors that hold K and V live in the model runner, indexed by block id:

    block table of a request (block_size = 4):
        token positions  0 1 2 3 | 4 5 6 7 | 8 9
        block ids        [  17   ,   3     ,  42 ]   slot of position p = table[p // 4] * 4 + p % 4

Prefix cache. A block whose 4 tokens are all computed is content-addressed by a chained hash

    hash(block i) = sha256(hash(block i-1) ‖ token ids of block i),   hash(block -1) = root

where `root` covers the namespace (model, dtype, block size) and the request's cache scope,
so equal hashes mean equal K/V. A new request reuses the blocks of its longest cached
prefix: its `num_computed_tokens` starts after them. Blocks no request references stay in
the free queue with their hash, ordered least recently freed first; `allocate` takes from
the front and only then forgets a block's hash (LRU eviction).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from seekserve.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def hash_block(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """The chained content hash of one full block."""
    return hashlib.sha256(parent + array("q", token_ids).tobytes()).digest()


def root_hash(namespace: str, cache_salt: str) -> bytes:
    """Hash of "block -1": what K/V depend on besides tokens, plus the cache scope."""
    return hashlib.sha256(f"{namespace}\x00{cache_salt}".encode()).digest()


class BlockPool:
    """Fixed set of block ids with reference counts and an LRU queue of unreferenced ones."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._ref_cnt = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        # unreferenced blocks, least recently freed first (evicted first)
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request references (cached or not): what `allocate` can hand out."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def is_free(self, block_id: int) -> bool:
        return self._ref_cnt[block_id] == 0

    def lookup(self, block_hash: bytes) -> int | None:
        return self._cached.get(block_hash)

    def allocate(self, num_blocks: int) -> list[int]:
        """Fresh blocks from the front of the free queue; their old hashes are evicted."""
        assert num_blocks <= len(self._free), "allocate() without can_allocate()"
        block_ids = []
        for _ in range(num_blocks):
            block_id, _ = self._free.popitem(last=False)
            old_hash = self._hash[block_id]
            if old_hash is not None:
                del self._cached[old_hash]
                self._hash[block_id] = None
                self.num_evictions += 1
            self._ref_cnt[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def touch(self, block_ids: Iterable[int]) -> None:
        """Take a reference on cached blocks (a prefix hit)."""
        for block_id in block_ids:
            if self._ref_cnt[block_id] == 0:
                del self._free[block_id]
            self._ref_cnt[block_id] += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one reference each; unreferenced blocks join the back of the free queue."""
        for block_id in block_ids:
            assert self._ref_cnt[block_id] > 0, f"double free of block {block_id}"
            self._ref_cnt[block_id] -= 1
            if self._ref_cnt[block_id] == 0:
                self._free[block_id] = None

    def cache(self, block_id: int, block_hash: bytes) -> bool:
        """Register a full, computed block under its hash (first writer wins); True if new."""
        if block_hash in self._cached or self._hash[block_id] is not None:
            return False
        self._cached[block_hash] = block_id
        self._hash[block_id] = block_hash
        return True


class KVCacheManager:
    """Gives each request the blocks its computed tokens need: find_cached_prefix /
    can_allocate / allocate / cache_full_blocks / free."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        namespace: str = "",
    ) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.namespace = namespace
        self.pool = BlockPool(num_blocks)
        self._block_tables: dict[str, list[int]] = {}
        # request id → how many of its leading blocks are registered in the cache already
        self._num_registered: dict[str, int] = {}
        # (block id, hash) registered since the engine last drained it (for the disk tier)
        self.newly_cached: list[tuple[int, bytes]] = []

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.pool.num_blocks

    def block_table(self, request_id: str) -> list[int]:
        return self._block_tables.get(request_id, [])

    # -- queries -------------------------------------------------------------------------

    def find_cached_prefix(self, request: Request) -> list[int]:
        """Block ids of the longest cached prefix of a request that holds no blocks yet.
        At least one token is left to compute, so the step that follows can sample."""
        if not self.enable_prefix_caching:
            return []
        max_blocks = self.max_cached_blocks(request)
        hits: list[int] = []
        for block_hash in self.block_hashes(request, max_blocks):
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def num_new_blocks(
        self, request: Request, num_new_tokens: int, prefix: Sequence[int] = ()
    ) -> int:
        """Blocks to add so that `num_computed_tokens + num_new_tokens` tokens fit (after
        adopting `prefix`, for a request that holds none yet)."""
        num_held = len(self.block_table(request.request_id)) + len(prefix)
        num_computed = request.num_computed_tokens + len(prefix) * self.block_size
        return max(0, cdiv(num_computed + num_new_tokens, self.block_size) - num_held)

    def can_allocate(
        self, request: Request, num_new_tokens: int, prefix: Sequence[int] = ()
    ) -> bool:
        # adopting an unreferenced cached block takes it out of the free queue too
        num_revived = sum(1 for block_id in prefix if self.pool.is_free(block_id))
        needed = self.num_new_blocks(request, num_new_tokens, prefix) + num_revived
        return needed <= self.pool.num_free_blocks

    # -- commands ------------------------------------------------------------------------

    def allocate(
        self, request: Request, num_new_tokens: int, prefix: Sequence[int] = ()
    ) -> list[int]:
        """Adopt `prefix` (then `request.num_computed_tokens` must move past it) and extend
        the request's block table; returns the newly allocated block ids."""
        num_new_blocks = self.num_new_blocks(request, num_new_tokens, prefix)
        if prefix:
            assert request.request_id not in self._block_tables, "prefix for a running request"
            self.pool.touch(prefix)
        new_block_ids = self.pool.allocate(num_new_blocks)
        table = self._block_tables.setdefault(request.request_id, [])
        table.extend(prefix)
        table.extend(new_block_ids)
        return new_block_ids

    def cache_full_blocks(self, request: Request) -> None:
        """Register the request's full, computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        table = self.block_table(request.request_id)
        num_full = min(request.num_computed_tokens // self.block_size, len(table))
        start = self._num_registered.get(request.request_id, 0)
        if num_full <= start:  # most decode steps: no block became full
            return
        hashes = self.block_hashes(request, num_full)
        for index in range(start, num_full):
            if self.pool.cache(table[index], hashes[index]):
                self.newly_cached.append((table[index], hashes[index]))
        self._num_registered[request.request_id] = num_full

    def free(self, request: Request) -> None:
        """Return all of the request's blocks; the last blocks are evicted first."""
        self._num_registered.pop(request.request_id, None)
        self.pool.free(reversed(self._block_tables.pop(request.request_id, [])))

    def max_cached_blocks(self, request: Request) -> int:
        """Most blocks a prefix hit may cover: one token is always left to compute."""
        return (request.num_tokens - 1) // self.block_size

    def block_hashes(self, request: Request, num_blocks: int) -> list[bytes]:
        """The chained hashes of the request's first `num_blocks` blocks (memoised)."""
        hashes = request.block_hashes
        size = self.block_size
        parent = hashes[-1] if hashes else root_hash(self.namespace, request.cache_salt)
        for index in range(len(hashes), num_blocks):
            parent = hash_block(parent, request.token_ids[index * size : (index + 1) * size])
            hashes.append(parent)
        return hashes[:num_blocks]
