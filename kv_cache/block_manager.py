"""Paged, skip-aware KV block bookkeeping (DESIGN.md §4). Pure Python: no torch here.

One pool of ``num_blocks`` blocks, each holding ``block_size`` positions of one layer's keys and
values. A sequence keeps one block table per layer, and layer ``l``'s table covers only the prefix
of positions that ran layer ``l``; skipped (layer, position) pairs never get a slot.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


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

    def num_blocks_needed(self, seq_id: Hashable, layer_num_tokens: Sequence[int]) -> int:
        """New blocks needed so that layer ``l`` holds ``layer_num_tokens[l]`` positions."""
        if len(layer_num_tokens) != self.num_layers:
            raise ValueError(
                f"expected {self.num_layers} layer counts, got {len(layer_num_tokens)}"
            )
        tables = self._tables.get(seq_id)
        needed = 0
        for layer, num_tokens in enumerate(layer_num_tokens):
            held = len(tables[layer]) if tables else 0
            needed += max(self._blocks_for(num_tokens) - held, 0)
        return needed

    def can_allocate(self, seq_id: Hashable, layer_num_tokens: Sequence[int]) -> bool:
        return self.num_blocks_needed(seq_id, layer_num_tokens) <= self.num_free_blocks

    def allocate(self, seq_id: Hashable, layer_num_tokens: Sequence[int]) -> None:
        """Grow the sequence's tables to cover ``layer_num_tokens``; tables never shrink."""
        needed = self.num_blocks_needed(seq_id, layer_num_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {needed}, have {self.num_free_blocks}")
        tables = self._tables.setdefault(seq_id, [[] for _ in range(self.num_layers)])
        for table, num_tokens in zip(tables, layer_num_tokens):
            for _ in range(self._blocks_for(num_tokens) - len(table)):
                table.append(self._free_block_ids.pop())

    def free(self, seq_id: Hashable) -> int:
        """Return all of the sequence's blocks to the pool; returns how many were freed."""
        tables = self._tables.pop(seq_id, None)
        if tables is None:
            return 0
        freed = 0
        for table in tables:
            self._free_block_ids.extend(reversed(table))
            freed += len(table)
        return freed

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)


def num_blocks_for_budget(budget_bytes: int, bytes_per_block: int) -> int:
    """How many blocks a memory budget buys (at least one)."""
    if bytes_per_block <= 0:
        raise ValueError("bytes_per_block must be > 0")
    return max(budget_bytes // bytes_per_block, 1)
