"""KV block bookkeeping: per-layer tables, the shared pool, and its invariants."""

from __future__ import annotations

import math
import random

import pytest
from factories import ref_layer_num_tokens

from skipdecode.kv_cache import KVCacheManager, num_blocks_for_budget
from skipdecode.scheduler import DepthSchedule


def held_ids(kv: KVCacheManager, seq_ids) -> list[int]:
    return [block for s in seq_ids for table in kv.block_tables(s) for block in table]


def assert_pool_consistent(kv: KVCacheManager, seq_ids) -> None:
    """free + held == total and no block id is owned twice or out of range."""
    ids = held_ids(kv, seq_ids)
    assert len(ids) == len(set(ids))
    assert all(0 <= block < kv.num_blocks for block in ids)
    assert kv.num_free_blocks + len(ids) == kv.num_blocks
    assert kv.num_used_blocks == len(ids)
    assert sum(kv.num_held_blocks(s) for s in seq_ids) == len(ids)


def test_tables_grow_to_ceil_of_positions_per_layer():
    kv = KVCacheManager(num_blocks=64, block_size=4, num_layers=3)
    kv.allocate("a", [5, 1, 8])
    assert [len(t) for t in kv.block_tables("a")] == [2, 1, 2]
    before = [list(t) for t in kv.block_tables("a")]
    kv.allocate("a", [9, 1, 17])
    after = kv.block_tables("a")
    assert [len(t) for t in after] == [3, 1, 5]
    assert all(new[: len(old)] == old for old, new in zip(before, after))  # only appended
    kv.allocate("a", [1, 1, 1])  # tables never shrink
    assert [len(t) for t in kv.block_tables("a")] == [3, 1, 5]
    assert kv.num_held_blocks("a") == 9
    assert_pool_consistent(kv, ["a"])


def test_skipped_layer_gets_no_blocks():
    kv = KVCacheManager(num_blocks=16, block_size=2, num_layers=3)
    kv.allocate("a", [6, 0, 6])
    tables = kv.block_tables("a")
    assert tables[1] == []
    assert len(tables[0]) == len(tables[2]) == 3
    assert kv.num_held_blocks("a") == 6


def test_skip_schedule_saves_blocks_on_skipped_layers():
    # Positions per layer follow the schedule; middle layers hold only what ran them.
    schedule = DepthSchedule(6, 1, 6, 2, 8)
    counts = ref_layer_num_tokens(schedule, prompt_len=4, num_tokens=64)
    kv = KVCacheManager(num_blocks=200, block_size=4, num_layers=6)
    kv.allocate("skip", counts)
    kv.allocate("full", [64] * 6)
    assert kv.num_held_blocks("full") == 6 * 16
    assert kv.num_held_blocks("skip") == sum(math.ceil(n / 4) for n in counts)
    assert kv.num_held_blocks("skip") < kv.num_held_blocks("full") / 2


def test_num_blocks_needed_counts_only_new_blocks():
    kv = KVCacheManager(num_blocks=32, block_size=4, num_layers=2)
    assert kv.num_blocks_needed("a", [4, 5]) == 1 + 2
    kv.allocate("a", [4, 5])
    assert kv.num_blocks_needed("a", [4, 8]) == 0
    assert kv.num_blocks_needed("a", [5, 9]) == 1 + 1
    with pytest.raises(ValueError, match="layer counts"):
        kv.num_blocks_needed("a", [4])


def test_can_allocate_is_false_exactly_when_blocks_run_out():
    kv = KVCacheManager(num_blocks=10, block_size=4, num_layers=2)
    kv.allocate("a", [12, 4])  # 3 + 1 blocks, 6 left
    assert kv.can_allocate("b", [12, 12])  # 6 blocks: exactly what is left
    assert not kv.can_allocate("b", [12, 13])  # 7 blocks
    assert kv.can_allocate("a", [24, 16])  # grows a by 3 + 3
    assert not kv.can_allocate("a", [25, 16])
    kv.allocate("b", [12, 12])
    assert kv.num_free_blocks == 0
    assert kv.can_allocate("a", [12, 4])  # nothing new needed
    assert not kv.can_allocate("c", [1, 0])


def test_allocate_beyond_the_pool_raises_and_changes_nothing():
    kv = KVCacheManager(num_blocks=6, block_size=2, num_layers=2)
    kv.allocate("a", [4, 2])  # 2 + 1 blocks, 3 left
    tables_before = [list(t) for t in kv.block_tables("a")]
    for seq, counts in [("a", [12, 2]), ("b", [4, 6]), ("b", [9, 0]), ("b", [4, 4])]:
        assert not kv.can_allocate(seq, counts)
        with pytest.raises(RuntimeError, match="out of KV blocks"):
            kv.allocate(seq, counts)
        assert kv.num_free_blocks == 3
        assert [list(t) for t in kv.block_tables("a")] == tables_before
        assert kv.num_held_blocks("b") == 0
        assert kv.block_tables("b") == [[], []]
        assert kv.free("b") == 0  # the failed call left no table behind
    kv.allocate("a", [10, 2])  # exactly the 3 blocks left still fit
    assert kv.num_free_blocks == 0
    assert_pool_consistent(kv, ["a", "b"])


def test_free_returns_every_block():
    kv = KVCacheManager(num_blocks=20, block_size=4, num_layers=3)
    kv.allocate("a", [8, 4, 8])
    kv.allocate("b", [4, 0, 13])
    assert kv.free("a") == 5
    assert kv.block_tables("a") == [[], [], []]
    assert kv.num_free_blocks == 20 - 5
    assert kv.free("b") == 5
    assert kv.free("b") == 0  # already freed
    assert kv.free("never-seen") == 0
    assert kv.num_free_blocks == 20
    kv.allocate("c", [80, 0, 0])  # the whole pool is usable again
    assert sorted(kv.block_tables("c")[0]) == list(range(20))


def test_usage_is_the_held_fraction_of_the_pool():
    kv = KVCacheManager(num_blocks=8, block_size=2, num_layers=2)
    assert kv.usage == 0.0
    kv.allocate("a", [4, 2])
    assert kv.usage == pytest.approx(3 / 8)
    kv.allocate("b", [6, 4])
    assert kv.usage == pytest.approx(1.0)
    kv.free("a")
    assert kv.usage == pytest.approx(5 / 8)


@pytest.mark.parametrize("seed", range(8))
def test_random_allocate_free_keeps_the_pool_consistent(seed):
    rng = random.Random(seed)
    num_layers, block_size = rng.randint(1, 5), rng.randint(1, 6)
    kv = KVCacheManager(num_blocks=rng.randint(8, 60), block_size=block_size, num_layers=num_layers)
    counts: dict[str, list[int]] = {}
    for _ in range(300):
        seq = f"s{rng.randint(0, 6)}"
        if seq in counts and rng.random() < 0.25:
            assert kv.free(seq) == sum(math.ceil(n / block_size) for n in counts.pop(seq))
        else:
            grown = [n + rng.choice([0, 0, 1, 3, 9]) for n in counts.get(seq, [0] * num_layers)]
            held = counts.get(seq, [0] * num_layers)
            needed = sum(
                math.ceil(new / block_size) - math.ceil(old / block_size)
                for new, old in zip(grown, held)
            )
            fits = needed <= kv.num_free_blocks
            assert kv.can_allocate(seq, grown) == fits
            if fits:
                kv.allocate(seq, grown)
                counts[seq] = grown
            else:
                with pytest.raises(RuntimeError):
                    kv.allocate(seq, grown)
        for s, c in counts.items():
            assert [len(t) for t in kv.block_tables(s)] == [math.ceil(n / block_size) for n in c]
        assert_pool_consistent(kv, counts)
    # The free list holds exactly the blocks nobody owns: fill the pool and look at every id.
    kv.allocate("filler", [kv.num_free_blocks * block_size] + [0] * (num_layers - 1))
    assert sorted(held_ids(kv, [*counts, "filler"])) == list(range(kv.num_blocks))
    for seq in [*counts, "filler"]:
        kv.free(seq)
    assert kv.num_free_blocks == kv.num_blocks


def test_invalid_sizes_raise():
    with pytest.raises(ValueError, match="num_blocks"):
        KVCacheManager(num_blocks=0, block_size=4, num_layers=2)
    with pytest.raises(ValueError, match="num_blocks"):
        KVCacheManager(num_blocks=4, block_size=0, num_layers=2)


def test_num_blocks_for_budget():
    assert num_blocks_for_budget(1000, 100) == 10
    assert num_blocks_for_budget(1099, 100) == 10
    assert num_blocks_for_budget(50, 100) == 1  # at least one
    with pytest.raises(ValueError, match="bytes_per_block"):
        num_blocks_for_budget(1000, 0)


def test_block_table_array_is_the_tables_zero_padded_after_any_history():
    rng = random.Random(7)
    kv = KVCacheManager(num_blocks=400, block_size=4, num_layers=5)
    grown = {s: [0] * 5 for s in "abc"}
    for _ in range(200):
        seq = rng.choice("abc")
        if rng.random() < 0.1:
            kv.free(seq)
            grown[seq] = [0] * 5
        else:
            grown[seq] = [n + rng.randint(0, 9) for n in grown[seq]]
            kv.allocate(seq, grown[seq])
        for s in "abc":
            tables = kv.block_tables(s)
            width = max(len(t) for t in tables)
            array = kv.block_table_array(s)
            assert array.shape == (5, width) and array.dtype.name == "int64"
            assert array.tolist() == [t + [0] * (width - len(t)) for t in tables]
            assert kv.layer_capacity(s) == [4 * len(t) for t in tables]
    assert_pool_consistent(kv, "abc")
