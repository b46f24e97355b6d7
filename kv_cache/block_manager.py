"""Paged, skip-aware KV block bookkeeping (DESIGN.md §4). No torch here.

One pool of ``num_blocks`` blocks, each holding ``block_size`` positions of one layer's keys and
values. A sequence keeps one block table per layer, and layer ``l``'s table covers only the prefix
of positions that ran layer ``l``; skipped (layer, position) pairs never get a slot.

Each sequence's tables are also kept as one zero-padded ``[num_layers, width]`` numpy array,
grown in place as blocks are added, so a step's metadata stacks a few arrays instead of walking
``num_layers`` lists per sequence.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


class KVCacheManager:
    """Owns the free-block pool and every sequence's per-layer block tables.

    The scheduler asks how many positions of each layer a sequence needs (``layer_num_tokens``);
    this class turns that into blocks. The tensors the block ids point into live in the runner.
    """

    def __init__(self, num_blocks: int, block_size: int, num_layers: int) -> None:
        if num_blocks < 1 or block_size < 1 or num_layers < 1:
            raise ValueError(
                f"KVCacheManager needs num_blocks, block_size and num_layers >= 1"
                f" (got {num_blocks}, {block_size}, {num_layers})"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_layers = num_layers
        # Pop from the end: the lowest ids are handed out first, which keeps tests readable.
        self._free_block_ids: list[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[Hashable, list[list[int]]] = {}
        self._arrays: dict[Hashable, np.ndarray] = {}  # [num_layers, capacity], zero-padded
        self._widths: dict[Hashable, int] = {}  # longest table of the sequence

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_block_ids)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free_block_ids)

    @property
    def usage(self) -> float:
        """Fraction of the pool held by sequences."""
        return self.num_used_blocks / self.num_blocks

    def num_held_blocks(self, seq_id: Hashable) -> int:
        return sum(len(table) for table in self._tables.get(seq_id, ()))

    def block_tables(self, seq_id: Hashable) -> list[list[int]]:
        """The sequence's block ids, one list per layer (empty lists if it holds none)."""
        return self._tables.get(seq_id) or [[] for _ in range(self.num_layers)]

    def layer_capacity(self, seq_id: Hashable) -> list[int]:
        """Per layer, the positions the sequence's blocks hold."""
        tables = self._tables.get(seq_id)
        if tables is None:
            return [0] * self.num_layers
        return [len(table) * self.block_size for table in tables]

    def block_table_array(self, seq_id: Hashable) -> np.ndarray:
        """The sequence's block ids as ``[num_layers, width]`` int64, each layer's table padded
        with block 0 to the longest one (a view, valid until the sequence's next allocation)."""
        array = self._arrays.get(seq_id)
        if array is None:
            return np.zeros((self.num_layers, 0), dtype=np.int64)
        return array[:, : self._widths[seq_id]]

    def num_blocks_needed(self, seq_id: Hashable, layer_num_tokens: Sequence[int]) -> int:
        """New blocks needed so that layer ``l`` holds ``layer_num_tokens[l]`` positions."""
        if len(layer_num_tokens) != self.num_layers:
            raise ValueError(
                f"expected {self.num_layers} layer counts, got {len(layer_num_tokens)}"
            )
        size = self.block_size
        tables = self._tables.get(seq_id)
        if tables is None:
            return sum(-(-n // size) for n in layer_num_tokens)
        return sum(max(-(-n // size) - len(t), 0) for n, t in zip(layer_num_tokens, tables))

    def can_allocate(self, seq_id: Hashable, layer_num_tokens: Sequence[int]) -> bool:
        return self.num_blocks_needed(seq_id, layer_num_tokens) <= self.num_free_blocks

    def allocate(self, seq_id: Hashable, layer_num_tokens: Sequence[int]) -> None:
        """Grow the sequence's tables to cover ``layer_num_tokens``; tables never shrink."""
        needed = self.num_blocks_needed(seq_id, layer_num_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {needed}, have {self.num_free_blocks}")
        if needed == 0:
            return
        tables = self._tables.setdefault(seq_id, [[] for _ in range(self.num_layers)])
        free, size = self._free_block_ids, self.block_size
        grown: list[tuple[int, int, list[int]]] = []  # (layer, first new column, new ids)
        for layer, (table, num_tokens) in enumerate(zip(tables, layer_num_tokens)):
            count = -(-num_tokens // size) - len(table)
            if count > 0:
                new_ids = free[len(free) - count :][::-1]  # pop order: lowest ids first
                del free[len(free) - count :]
                grown.append((layer, len(table), new_ids))
                table.extend(new_ids)
        self._widths[seq_id] = width = max(len(t) for t in tables)
        array = self._arrays.get(seq_id)
        if array is None or array.shape[1] < width:
            grown_array = np.zeros((self.num_layers, max(2 * width, 4)), dtype=np.int64)
            if array is not None:
                grown_array[:, : array.shape[1]] = array
            self._arrays[seq_id] = array = grown_array
        for layer, start, new_ids in grown:
            array[layer, start : start + len(new_ids)] = new_ids

    def free(self, seq_id: Hashable) -> int:
        """Return all of the sequence's blocks to the pool; returns how many were freed."""
        tables = self._tables.pop(seq_id, None)
        self._arrays.pop(seq_id, None)
        self._widths.pop(seq_id, None)
        if tables is None:
            return 0
        freed = 0
        for table in tables:
            self._free_block_ids.extend(reversed(table))
            freed += len(table)
        return freed


def num_blocks_for_budget(budget_bytes: int, bytes_per_block: int) -> int:
    """How many blocks a memory budget buys (at least one)."""
    if bytes_per_block <= 0:
        raise ValueError("bytes_per_block must be > 0")
    return max(budget_bytes // bytes_per_block, 1)
