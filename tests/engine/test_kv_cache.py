from seekserve.engine.kv_cache import BlockPool, KVCacheManager
from seekserve.engine.request import Request
from seekserve.sampling_params import SamplingParams


def make_request(request_id: str, num_prompt_tokens: int) -> Request:
    return Request(request_id, list(range(num_prompt_tokens)), SamplingParams(), frozenset(), 1024)


def test_block_pool_hands_out_ids_in_order_and_reuses_freed_ones_last():
    pool = BlockPool(4)
    assert pool.allocate(2) == [0, 1]
    assert pool.allocate(1) == [2]
    pool.free([0])
    assert pool.allocate(2) == [3, 0]
    assert pool.num_free_blocks == 0


def test_manager_allocates_only_the_blocks_new_tokens_need():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    request = make_request("a", 10)
    assert kv.num_new_blocks(request, 10) == 3
    assert kv.allocate(request, 10) == [0, 1, 2]
    request.num_computed_tokens = 10
    assert kv.num_new_blocks(request, 2) == 0  # positions 10, 11 fit in block 2
    assert kv.allocate(request, 2) == []
    request.num_computed_tokens = 12
    assert kv.allocate(request, 1) == [3]
    assert kv.block_table("a") == [0, 1, 2, 3]
    assert kv.num_free_blocks == 4


def test_can_allocate_refuses_beyond_the_pool_and_free_returns_everything():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a, b = make_request("a", 8), make_request("b", 8)
    kv.allocate(a, 8)
    assert not kv.can_allocate(b, 8)
    assert kv.can_allocate(b, 4)
    kv.free(a)
    assert kv.num_free_blocks == 3
    assert kv.block_table("a") == []
    kv.free(a)  # freeing twice is a no-op for the manager (no table left)
    assert kv.num_free_blocks == 3
