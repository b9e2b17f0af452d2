"""The prefix cache's disk tier: exact round trips, faults detected, tokens unchanged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from seekserve.engine.disk_cache import MAGIC, DiskKVCache
from seekserve.engine.engine import Engine
from seekserve.engine.request import Request
from seekserve.sampling_params import SamplingParams
from tests.conftest import engine_config

SHAPE = (2, 2, 4, 2, 8)


def block(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


def make_disk(directory: Path, max_bytes: int = 1 << 20, namespace: str = "ns") -> DiskKVCache:
    return DiskKVCache(directory, max_bytes, namespace, SHAPE, torch.bfloat16)


def flush(disk: DiskKVCache) -> None:
    disk.flush()


def test_round_trip_and_restart(tmp_path):
    disk = make_disk(tmp_path)
    disk.submit(b"\x01" * 32, block(1))
    disk.submit(b"\x02" * 32, block(2))
    flush(disk)
    assert disk.num_writes == 2 and disk.num_blocks == 2
    assert torch.equal(disk.load(b"\x01" * 32), block(1))
    restarted = make_disk(tmp_path)
    assert restarted.num_blocks == 2
    assert torch.equal(restarted.load(b"\x02" * 32), block(2))
    assert restarted.load(b"\x03" * 32) is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "empty"])
def test_damaged_files_are_misses_and_are_deleted(tmp_path, damage):
    disk = make_disk(tmp_path)
    disk.submit(b"\x01" * 32, block(1))
    flush(disk)
    path = tmp_path / (("01" * 32) + ".kvb")
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[-5] ^= 0xFF
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "magic":
        blob[: len(MAGIC)] = b"X" * len(MAGIC)
    else:
        blob = bytearray()
    path.write_bytes(bytes(blob))
    restarted = make_disk(tmp_path)
    assert restarted.load(b"\x01" * 32) is None
    assert restarted.num_rejected == 1 and not path.exists() and restarted.num_blocks == 0


def test_files_of_another_namespace_are_rejected(tmp_path):
    disk = make_disk(tmp_path, namespace="model-a|bf16|4")
    disk.submit(b"\x01" * 32, block(1))
    flush(disk)
    other = make_disk(tmp_path, namespace="model-b|bf16|4")
    assert other.load(b"\x01" * 32) is None


def test_unfinished_writes_are_dropped_at_start(tmp_path):
    (tmp_path / ("ab" * 32 + ".123.tmp")).write_bytes(b"half a block")
    disk = make_disk(tmp_path)
    assert disk.num_blocks == 0 and not list(tmp_path.glob("*.tmp"))


def test_size_cap_deletes_least_recently_used_files(tmp_path):
    one = len(make_disk(tmp_path)._encode(block(0)))
    disk = make_disk(tmp_path, max_bytes=2 * one)
    for index in range(3):
        disk.submit(bytes([index]) * 32, block(index))
        time.sleep(0.05)  # written in order
    flush(disk)
    assert disk.num_blocks == 2 and disk.num_bytes == 2 * one
    assert disk.load(b"\x00" * 32) is None  # the oldest went
    assert disk.load(b"\x02" * 32) is not None


# -- through the engine ------------------------------------------------------------------

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
SHARED = list(range(30, 75))  # 45 tokens: 11 full blocks of 4


def run(engine: Engine, request_id: str, prompt: list[int]) -> tuple[list[int], int]:
    engine.add_request(request_id, prompt, GREEDY)
    tokens, cached = [], 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.extend(output.new_token_ids)
            cached = output.num_cached_tokens
    return tokens, cached


def test_disk_hit_after_memory_eviction_gives_the_cold_tokens(tiny_llama_dir, tmp_path):
    cold = Engine.from_config(
        engine_config(tiny_llama_dir, enable_prefix_caching=False), frozenset()
    )
    expected, _ = run(cold, "cold", SHARED + [1, 2])
    engine = Engine.from_config(
        engine_config(tiny_llama_dir, num_blocks=20, disk_cache_dir=tmp_path / "kv"), frozenset()
    )
    assert run(engine, "a", SHARED + [1, 2]) == (expected, 0)
    engine.disk.flush()
    # 70 + 8 tokens need all 20 blocks: every cached block of SHARED is evicted from memory
    run(engine, "filler", list(range(100, 170)))
    probe = Request("probe", SHARED + [1, 2], GREEDY, frozenset(), 1024)
    assert engine.kv_cache.find_cached_prefix(probe) == []  # nothing of SHARED in memory
    tokens, cached = run(engine, "b", SHARED + [1, 2])
    assert (tokens, cached) == (expected, 44)
    assert engine.scheduler.stats.num_disk_prompt_tokens == 44


def test_disk_hits_after_a_restart_give_the_cold_tokens(tiny_llama_dir, tmp_path):
    def make(**kwargs) -> Engine:
        config = engine_config(tiny_llama_dir, disk_cache_dir=tmp_path / "kv", **kwargs)
        return Engine.from_config(config, eos_token_ids=frozenset())

    cold = Engine.from_config(
        engine_config(tiny_llama_dir, enable_prefix_caching=False), frozenset()
    )
    expected, _ = run(cold, "cold", SHARED + [1, 2])

    first = make()
    assert run(first, "a", SHARED + [1, 2]) == (expected, 0)
    first.close()
    # every full computed block: 47 prompt + 7 fed-back output tokens = 54 → 13 blocks
    assert first.disk.num_writes == 13

    # a new engine (empty memory) finds the prefix on disk
    second = make()
    tokens, cached = run(second, "b", SHARED + [1, 2])
    assert (tokens, cached) == (expected, 44)
    assert second.scheduler.stats.num_disk_prompt_tokens == 44

    # damage one file in the middle: the hit stops before it, tokens are unchanged
    second.close()
    files = sorted((tmp_path / "kv").glob("*.kvb"), key=lambda p: p.stat().st_mtime)
    victim = files[5]
    victim.write_bytes(victim.read_bytes()[:100])
    third = make()
    tokens, cached = run(third, "c", SHARED + [1, 2])
    assert tokens == expected
    assert cached < 44 and third.disk.num_rejected == 1
