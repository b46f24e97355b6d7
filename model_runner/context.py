"""Per-step attention metadata: which rows run each layer and where their keys and values live.

Built once per step on the host from the scheduled chunks, then moved to the device; the layer
loop only slices and indexes these tensors (no host syncs).

Rows are the step's tokens sorted by start layer ``L - (D - w)``, which is deepest first when all
requests share the warm-up count ``w``; then the tokens that run layer ``l`` are the first
``num_tokens[l]`` rows (DESIGN.md §3), and each layer's weights are read once per step. (When
requests with different ``w`` share a step, a warm-up layer's rows may not be a prefix; the plan
then carries their row indices.) Within one sequence, the tokens that run a layer
are a prefix of its chunk, and all earlier positions of that sequence ran the layer too, so a query
at position ``p`` attends to the layer's slots for positions ``0..p``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import torch


@dataclass
class AttentionGroup:
    """Sequences attended in one padded call at a layer (one shape: ``[S, max_q, max_kv]``)."""

    seq_index: torch.Tensor  # [S] index of each sequence in the step (picks its block tables)
    row_index: torch.Tensor  # [S, max_q] running-row index of each query; padding points at 0
    mask: torch.Tensor  # [S, 1, max_q, max_kv] bool, True where the query may attend
    num_blocks: int  # max_kv / block_size: keys are read whole blocks at a time
    kv_lens: torch.Tensor  # [S] keys each sequence's last query attends to (positions 0..n-1)
    host_seq_index: np.ndarray | None = field(default=None, repr=False)  # seq_index on the host

    @property
    def num_seqs(self) -> int:
        return self.seq_index.shape[0]

    @property
    def is_decode(self) -> bool:
        """One query per sequence (host-side shape, no device sync)."""
        return self.row_index.shape[1] == 1


@dataclass
class LayerPlan:
    """How the queries of one layer are grouped; shared by layers with the same tokens."""

    num_tokens: int  # how many rows run the layer
    rows: torch.Tensor | None  # [num_tokens] the rows, or None when they are rows [0, num_tokens)
    positions: torch.Tensor  # [num_tokens] position of each running row
    groups: list[AttentionGroup]
    out_index: torch.Tensor  # [num_tokens] each running row's index in the concatenated outputs
    out_is_identity: bool = False  # the concatenated outputs are already in running-row order


@dataclass
class LayerContext:
    """What one layer's attention needs: its plan, its slots and the shared KV pool."""

    plan: LayerPlan
    read_rows: list[torch.Tensor | None]  # per group: [kv_heads * S * num_blocks] pool rows
    tables: list[torch.Tensor | None]  # per decode group with a kernel: [S, num_blocks] blocks
    write_slots: torch.Tensor  # [num_tokens] flat pool slot of each running token's K/V
    key_cache: torch.Tensor  # [num_kv_heads, num_blocks * block_size, head_dim]
    value_cache: torch.Tensor  # same shape as key_cache
    block_size: int
    kernels: ModuleType | None = None  # the CPU kernels (cpu_kernels.py), or None: PyTorch ops


@dataclass
class StepContext:
    """Attention metadata for one step (flat tokens in, this alongside)."""

    positions: torch.Tensor  # [N] position of each (depth-sorted) row
    layer_plans: list[LayerPlan]  # [L] (layers with the same running tokens share a plan)
    read_rows: list[list[torch.Tensor | None]]  # [L] per group: (head, block) pool rows to read
    tables: list[list[torch.Tensor | None]]  # [L] per group: blocks, for the decode kernel
    write_slots: torch.Tensor  # [L, N] flat pool slot of each row's K/V at each layer
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    block_size: int
    kernels: ModuleType | None = None  # the CPU kernels (cpu_kernels.py), or None: PyTorch ops

    def layer(self, layer: int) -> LayerContext:
        plan = self.layer_plans[layer]
        slots = self.write_slots[layer]
        return LayerContext(
            plan=plan,
            read_rows=self.read_rows[layer],
            tables=self.tables[layer],
            write_slots=slots[: plan.num_tokens] if plan.rows is None else slots[plan.rows],
            key_cache=self.key_cache,
            value_cache=self.value_cache,
            block_size=self.block_size,
            kernels=self.kernels,
        )


@dataclass
class StepLayout:
    """Host-side facts about a step's rows, shared by the context and the logits selection."""

    order: np.ndarray  # [N] original flat index of each sorted row
    rows_of_flat: np.ndarray  # [N] sorted row of each original flat token
    chunk_offsets: np.ndarray  # [S + 1] start of each sequence's chunk in the flat order


def flatten_ints(lists: Sequence[Sequence[int]]) -> np.ndarray:
    """The lists concatenated, as int64 (one numpy call rather than one per list)."""
    return np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64)


def sort_by_start_layer(
    depths: Sequence[Sequence[int]], warmup_layers: Sequence[int], num_layers: int
) -> StepLayout:
    """Sort the step's tokens by start layer (deepest first), keeping chunk order among ties."""
    lengths = np.array([len(d) for d in depths], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = flatten_ints(depths)
    warmup = np.repeat(np.asarray(warmup_layers, dtype=np.int64), lengths)
    order = np.argsort(num_layers - flat + warmup, kind="stable")
    rows = np.empty_like(order)
    rows[order] = np.arange(len(order))
    return StepLayout(order=order, rows_of_flat=rows, chunk_offsets=offsets)


def build_step_context(
    depths: Sequence[Sequence[int]],
    start_positions: Sequence[int],
    block_tables: Sequence[np.ndarray | Sequence[Sequence[int]]],
    num_layers: int,
    warmup_layers: Sequence[int],
    layout: StepLayout,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_size: int,
    kernels: ModuleType | None = None,
) -> StepContext:
    """Build the metadata for one step from its chunks (one entry per scheduled sequence).

    ``warmup_layers[i]`` is sequence ``i``'s warm-up count ``w``: a token of depth ``D`` runs
    layers ``[0, w)`` and ``[L - (D - w), L)``. ``block_tables[i]`` is sequence ``i``'s
    ``[L, width]`` block-id array (zero-padded, as the KV manager keeps it) or its per-layer
    lists. With the CPU ``kernels``, single-query groups
    get block tables for their decode attention instead of pool rows to gather.
    """
    device = key_cache.device
    num_seqs = len(depths)
    seq_of_flat = np.repeat(np.arange(num_seqs), np.diff(layout.chunk_offsets))
    flat_depths = flatten_ints(depths)
    flat_warmup = np.asarray(warmup_layers, dtype=np.int64)[seq_of_flat]
    chunk_index = np.arange(len(flat_depths)) - layout.chunk_offsets[seq_of_flat]
    flat_positions = np.asarray(start_positions, dtype=np.int64)[seq_of_flat] + chunk_index

    # runs[l, t]: token t (flat order) runs layer l.
    layers = np.arange(num_layers)[:, None]
    start_layer = num_layers - (flat_depths - flat_warmup)
    runs = (layers < flat_warmup[None, :]) | (layers >= start_layer[None, :])
    # Per layer, how many of each sequence's chunk tokens run it (a prefix of the chunk).
    q_lens = np.add.reduceat(runs, layout.chunk_offsets[:-1], axis=1) if num_seqs else runs
    plans: dict[bytes, LayerPlan] = {}
    layer_plans = []
    for layer in range(num_layers):
        key = q_lens[layer].tobytes()
        if key not in plans:
            rows = np.sort(layout.rows_of_flat[runs[layer]])
            plans[key] = _layer_plan(
                q_lens[layer], rows, start_positions, layout, block_size, device
            )
        layer_plans.append(plans[key])

    tables = _block_table_tensor(block_tables, num_layers)
    # Per layer and group, the pool rows to gather: the pool is [kv_heads, slots, head_dim],
    # seen as rows of one head's block (block_size contiguous slots), so row = head * blocks +
    # block. Gathering whole blocks makes 16x fewer, larger copies than gathering slots, and
    # the result is already attention's [kv_heads, S, keys, head_dim] operand. The indexing
    # runs in numpy (small arrays: a fraction of torch's per-call cost), one tensor per group.
    num_kv_heads, num_slots = key_cache.shape[:2]
    head_rows = np.arange(num_kv_heads).reshape(1, -1, 1, 1) * (num_slots // block_size)
    read_rows: list[list[torch.Tensor | None]] = [[] for _ in range(num_layers)]
    read_tables: list[list[torch.Tensor | None]] = [[] for _ in range(num_layers)]
    for plan in plans.values():
        layers = [i for i, p in enumerate(layer_plans) if p is plan]
        plan_tables = tables if len(layers) == num_layers else tables[layers]
        for group in plan.groups:
            blocks = plan_tables[:, group.host_seq_index, : group.num_blocks]  # [L', S, blocks]
            if kernels is not None and group.is_decode:
                per_layer = torch.from_numpy(np.ascontiguousarray(blocks)).to(device).unbind(0)
                for layer, table in zip(layers, per_layer):
                    read_rows[layer].append(None)
                    read_tables[layer].append(table)
                continue
            rows = (head_rows + blocks[:, None]).reshape(len(layers), -1)  # [L', KVH*S*blocks]
            for layer, layer_rows in zip(layers, torch.from_numpy(rows).to(device).unbind(0)):
                read_rows[layer].append(layer_rows)
                read_tables[layer].append(None)
    sorted_seq = seq_of_flat[layout.order]
    sorted_pos = flat_positions[layout.order]
    write_slots = (
        tables[:, sorted_seq, sorted_pos // block_size] * block_size + sorted_pos % block_size
    )
    return StepContext(
        positions=torch.from_numpy(sorted_pos).to(device),
        layer_plans=layer_plans,
        read_rows=read_rows,
        tables=read_tables,
        write_slots=torch.from_numpy(np.ascontiguousarray(write_slots)).to(device),
        key_cache=key_cache,
        value_cache=value_cache,
        block_size=block_size,
        kernels=kernels,
    )


def _block_table_tensor(
    block_tables: Sequence[np.ndarray | Sequence[Sequence[int]]], num_layers: int
) -> np.ndarray:
    # [L, S, max_blocks], padded with block 0 (never read: masks stop at each sequence's length).
    arrays = [t if isinstance(t, np.ndarray) else _padded(t, num_layers) for t in block_tables]
    max_blocks = max((a.shape[1] for a in arrays), default=1) or 1
    tables = np.zeros((num_layers, len(arrays), max_blocks), dtype=np.int64)
    for s, array in enumerate(arrays):
        tables[:, s, : array.shape[1]] = array
    return tables


def _padded(seq_tables: Sequence[Sequence[int]], num_layers: int) -> np.ndarray:
    width = max((len(t) for t in seq_tables), default=0)
    array = np.zeros((num_layers, width), dtype=np.int64)
    for layer, table in enumerate(seq_tables):
        array[layer, : len(table)] = table
    return array


def _layer_plan(
    q_lens: np.ndarray,
    rows: np.ndarray,
    start_positions: Sequence[int],
    layout: StepLayout,
    block_size: int,
    device: torch.device,
) -> LayerPlan:
    """Group the sequences that run a layer: single-query ones together, longer chunks together.

    Splitting keeps a long prefill chunk from padding every decode to its length.
    """
    starts = np.asarray(start_positions, dtype=np.int64)
    num_tokens = len(rows)
    local_of_row = np.zeros(len(layout.order), dtype=np.int64)  # sorted row -> running index
    local_of_row[rows] = np.arange(num_tokens)
    seq_of_row = np.searchsorted(layout.chunk_offsets, layout.order[rows], side="right") - 1
    chunk_pos = layout.order[rows] - layout.chunk_offsets[seq_of_row]
    out_index = np.zeros(num_tokens, dtype=np.int64)
    groups = []
    base = 0
    for members in (np.flatnonzero(q_lens == 1), np.flatnonzero(q_lens > 1)):
        if len(members) == 0:
            continue
        max_q = int(q_lens[members].max())
        num_blocks = -(-int((starts[members] + q_lens[members]).max()) // block_size)
        max_kv = num_blocks * block_size  # keys past a sequence's end are masked out below
        j = np.arange(max_q)[None, :]
        is_valid = j < q_lens[members][:, None]  # [S, max_q]
        flat = layout.chunk_offsets[members][:, None] + np.minimum(j, q_lens[members][:, None] - 1)
        row_index = np.where(is_valid, local_of_row[layout.rows_of_flat[flat]], 0)
        query_pos = starts[members][:, None] + j  # [S, max_q]
        key_pos = np.arange(max_kv)
        mask = key_pos[None, None, :] <= query_pos[:, :, None]
        # Padding queries attend to key 0 only, so softmax stays finite; their output is dropped.
        mask |= ~is_valid[:, :, None] & (key_pos == 0)[None, None, :]
        out_index[row_index[is_valid]] = base + np.flatnonzero(is_valid.reshape(-1))
        base += len(members) * max_q
        groups.append(
            AttentionGroup(
                seq_index=torch.from_numpy(members).to(device),
                row_index=torch.from_numpy(row_index).to(device),
                mask=torch.from_numpy(mask[:, None]).to(device),
                num_blocks=num_blocks,
                kv_lens=torch.from_numpy(starts[members] + q_lens[members]).to(device),
                host_seq_index=members,
            )
        )
    is_prefix = bool(np.array_equal(rows, np.arange(num_tokens)))
    return LayerPlan(
        num_tokens=num_tokens,
        rows=None if is_prefix else torch.from_numpy(rows).to(device),
        positions=torch.from_numpy(starts[seq_of_row] + chunk_pos).to(device),
        groups=groups,
        out_index=torch.from_numpy(out_index).to(device),
        out_is_identity=base == num_tokens and bool(np.array_equal(out_index, np.arange(base))),
    )
