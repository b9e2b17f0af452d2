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


# -- prefix cache ------------------------------------------------------------------------


def computed(kv: KVCacheManager, request: Request, prefix=()) -> list[int]:
    """Admit `request` (after adopting `prefix`), compute all its tokens, cache full blocks."""
    num_cached = len(prefix) * kv.block_size
    kv.allocate(request, request.num_tokens - num_cached, prefix)
    request.num_computed_tokens = request.num_tokens
    kv.cache_full_blocks(request)
    return kv.block_table(request.request_id)


def tokens_request(request_id: str, token_ids: list[int], salt: str = "") -> Request:
    request = Request(request_id, token_ids, SamplingParams(), frozenset(), 1024)
    request.cache_salt = salt
    return request


def test_lru_queue_evicts_the_least_recently_freed_block_first():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.cache(a, b"ha")
    pool.cache(b, b"hb")
    pool.free([b, a, c])  # free order = eviction order
    assert pool.num_free_blocks == 3 and pool.num_cached_blocks == 2
    assert pool.allocate(1) == [b]  # b's hash is forgotten
    assert (pool.lookup(b"hb"), pool.lookup(b"ha"), pool.num_evictions) == (None, a, 1)
    pool.touch([a])  # a prefix hit takes a out of the free queue
    assert pool.allocate(1) == [c] and pool.num_free_blocks == 0


def test_a_request_reuses_the_full_blocks_of_a_computed_prefix():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    first = tokens_request("a", list(range(10)))
    assert computed(kv, first) == [0, 1, 2]  # blocks 0, 1 full and cached; 2 partial
    kv.free(first)
    second = tokens_request("b", list(range(9)) + [99, 98])
    prefix = kv.find_cached_prefix(second)
    assert prefix == [0, 1]
    assert kv.can_allocate(second, 3, prefix)
    assert kv.allocate(second, 3, prefix) == [3]  # the partial block 2 is not reused
    assert kv.block_table("b") == [0, 1, 3]


def test_at_least_one_token_is_left_to_compute():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    first = tokens_request("a", list(range(8)))
    computed(kv, first)
    kv.free(first)
    assert kv.find_cached_prefix(tokens_request("b", list(range(8)))) == [0]
    assert kv.find_cached_prefix(tokens_request("c", list(range(9)))) == [0, 1]


def test_cache_scopes_and_disabled_cache_do_not_share():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    computed(kv, tokens_request("a", list(range(9)), salt="key-1"))
    assert kv.find_cached_prefix(tokens_request("b", list(range(9)), salt="key-2")) == []
    assert kv.find_cached_prefix(tokens_request("c", list(range(9)), salt="key-1")) == [0, 1]
    off = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    computed(off, tokens_request("a", list(range(9))))
    assert off.find_cached_prefix(tokens_request("b", list(range(9)))) == []


def test_eviction_forgets_cached_prefixes_when_the_pool_needs_room():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    first = tokens_request("a", list(range(9)))
    computed(kv, first)
    kv.free(first)  # blocks 0, 1 cached and free; freed in reverse: 2, 1, 0
    other = tokens_request("b", list(range(100, 113)))
    assert computed(kv, other) == [3, 2, 1, 0]  # takes every block, evicting the prefix
    assert kv.pool.num_evictions == 2
    assert kv.find_cached_prefix(tokens_request("c", list(range(9)))) == []
