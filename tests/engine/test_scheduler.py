"""Scheduler decisions on a fake model: exact chunks, admission order, preemption."""

from seekserve.config import SchedulerConfig
from seekserve.engine.kv_cache import KVCacheManager
from seekserve.engine.request import Request
from seekserve.engine.scheduler import Scheduler
from seekserve.sampling_params import SamplingParams


def make_scheduler(num_blocks=16, block_size=4, max_num_seqs=4, budget=8) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget),
        KVCacheManager(num_blocks, block_size),
    )


def add(scheduler: Scheduler, request_id: str, num_prompt: int, max_tokens: int = 4) -> Request:
    request = Request(
        request_id,
        list(range(100, 100 + num_prompt)),
        SamplingParams(max_tokens=max_tokens),
        frozenset({0}),
        1024,
    )
    scheduler.add_request(request)
    return request


def run_step(scheduler: Scheduler, token: int = 7) -> dict[str, int]:
    out = scheduler.schedule()
    chunks = {s.request_id: s.num_tokens for s in out.scheduled}
    sampled = {s.request_id: token for s in out.scheduled if s.needs_sample}
    scheduler.update(out, sampled)
    return chunks


def test_chunked_prefill_shares_one_budget_with_decodes():
    s = make_scheduler(budget=8)
    add(s, "a", 10)
    add(s, "b", 3)
    assert run_step(s) == {"a": 8}  # a's first chunk takes the whole budget
    assert run_step(s) == {"a": 2, "b": 3}  # a finishes its prompt (samples), b prefills
    assert run_step(s) == {"a": 1, "b": 1}  # both decode
    out = s.schedule()
    assert [x.request_id for x in out.scheduled] == ["a", "b"]
    assert out.scheduled[0].start_position == 11 and out.scheduled[0].token_ids == [7]


def test_decodes_come_first_in_batch_order():
    s = make_scheduler(budget=16)
    add(s, "a", 2)
    run_step(s)  # a prefilled, now decoding
    add(s, "b", 5)
    out = s.schedule()
    assert [(x.request_id, x.num_tokens, x.needs_sample) for x in out.scheduled] == [
        ("a", 1, True),
        ("b", 5, True),
    ]


def test_max_num_seqs_limits_admission():
    s = make_scheduler(max_num_seqs=2, budget=16)
    for name in "abc":
        add(s, name, 2)
    assert set(run_step(s)) == {"a", "b"}
    assert [r.request_id for r in s.waiting] == ["c"]


def test_preemption_frees_the_newest_and_requeues_it_first():
    # 4 blocks of 4 tokens: a (6 prompt) and b (6 prompt) take 2 blocks each
    s = make_scheduler(num_blocks=4, block_size=4, budget=16)
    a = add(s, "a", 6, max_tokens=8)
    b = add(s, "b", 6, max_tokens=8)
    assert run_step(s) == {"a": 6, "b": 6}
    assert run_step(s) == {"a": 1, "b": 1}  # positions 6 fit in the second blocks
    assert run_step(s) == {"a": 1, "b": 1}  # position 7 too
    # position 8 needs a third block each; none free: b (newest) is preempted for a
    out = s.schedule()
    assert out.preempted_request_ids == ["b"]
    assert [x.request_id for x in out.scheduled] == ["a"]
    assert b.num_computed_tokens == 0 and b.num_preemptions == 1
    assert list(s.waiting) == [b]
    assert s.kv_cache.block_table("b") == []
    assert len(s.kv_cache.block_table("a")) == 3
    s.update(out, {"a": 7})
    assert a.num_tokens == 10


def test_abort_frees_blocks_of_running_and_waiting_requests():
    s = make_scheduler(num_blocks=8, budget=4)
    add(s, "a", 6)
    add(s, "b", 2)
    run_step(s)  # a's first 4 tokens computed
    assert s.kv_cache.num_free_blocks == 7
    s.abort_request("a")
    s.abort_request("b")
    s.abort_request("unknown")
    assert s.kv_cache.num_free_blocks == 8
    assert not s.has_unfinished_requests()
    assert s.schedule().is_empty
