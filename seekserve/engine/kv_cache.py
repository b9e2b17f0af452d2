"""The KV block pool and the per-request block tables.

Owns block ids and their reference counts; nothing outside this module touches them. The
tensors that hold K and V live in the model runner, indexed by the block ids handed out here:

    block table of a request (block_size = 4):
        token positions  0 1 2 3 | 4 5 6 7 | 8 9
        block ids        [  17   ,   3     ,  42 ]   slot of position p = table[p // 4] * 4 + p % 4
"""

from __future__ import annotations

from collections import deque

from seekserve.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockPool:
    """Fixed set of block ids with reference counts; free ids are reused first-in first-out."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._ref_cnt = [0] * num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def allocate(self, num_blocks: int) -> list[int]:
        assert num_blocks <= len(self._free), "allocate() without can_allocate()"
        block_ids = [self._free.popleft() for _ in range(num_blocks)]
        for block_id in block_ids:
            assert self._ref_cnt[block_id] == 0
            self._ref_cnt[block_id] = 1
        return block_ids

    def free(self, block_ids: list[int]) -> None:
        for block_id in block_ids:
            assert self._ref_cnt[block_id] > 0, f"double free of block {block_id}"
            self._ref_cnt[block_id] -= 1
            if self._ref_cnt[block_id] == 0:
                self._free.append(block_id)


class KVCacheManager:
    """Gives each request the blocks its computed tokens need: can_allocate / allocate / free."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self._block_tables: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.pool.num_blocks

    def block_table(self, request_id: str) -> list[int]:
        return self._block_tables.get(request_id, [])

    def num_new_blocks(self, request: Request, num_new_tokens: int) -> int:
        """Blocks to add so that `num_computed_tokens + num_new_tokens` tokens fit."""
        needed = cdiv(request.num_computed_tokens + num_new_tokens, self.block_size)
        return max(0, needed - len(self.block_table(request.request_id)))

    def can_allocate(self, request: Request, num_new_tokens: int) -> bool:
        return self.num_new_blocks(request, num_new_tokens) <= self.pool.num_free_blocks

    def allocate(self, request: Request, num_new_tokens: int) -> list[int]:
        """Extend the request's block table; returns the new block ids."""
        new_block_ids = self.pool.allocate(self.num_new_blocks(request, num_new_tokens))
        self._block_tables.setdefault(request.request_id, []).extend(new_block_ids)
        return new_block_ids

    def free(self, request: Request) -> None:
        """Return all of the request's blocks to the pool."""
        self.pool.free(self._block_tables.pop(request.request_id, []))
