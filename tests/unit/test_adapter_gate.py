"""model_runner/gated_adapter.py: the gate names, per layer, the rows of depth < L among the
rows the step context runs at that layer (checked against build_step_context itself)."""

from __future__ import annotations

import numpy as np
import torch

from skipdecode.model_runner.context import build_step_context, sort_by_start_layer
from skipdecode.model_runner.gated_adapter import AdapterGate

NUM_LAYERS = 8


def _random_step(rng: np.random.Generator) -> tuple[list[list[int]], list[int]]:
    """Chunks of non-increasing depths (prompt tokens at L, then decaying generated tokens),
    with warm-up counts 0..2 mixed in one step."""
    depths, warmups = [], []
    for _ in range(int(rng.integers(1, 6))):
        warmup = int(rng.integers(0, 3))
        chunk = rng.integers(warmup + 1, NUM_LAYERS + 1, size=int(rng.integers(1, 5)))
        if rng.random() < 0.3:
            chunk[:] = NUM_LAYERS  # a prompt chunk
        depths.append(sorted(chunk.tolist(), reverse=True))
        warmups.append(warmup)
    return depths, warmups


def _gated_places(rows, num_running: int) -> list[int]:
    if rows is None:
        return []
    if isinstance(rows, int):
        return list(range(rows, num_running))
    return rows.tolist()


def test_gate_names_the_skipping_rows_each_layer_runs():
    rng = np.random.default_rng(0)
    cache = torch.zeros(1, 8, 2)  # [kv_heads, slots, head_dim]: 2 blocks of 4 slots
    kinds = set()
    for _ in range(300):
        depths, warmups = _random_step(rng)
        layout = sort_by_start_layer(depths, warmups, NUM_LAYERS)
        tables = [[[0, 1]] * NUM_LAYERS for _ in depths]
        ctx = build_step_context(
            depths, [0] * len(depths), tables, NUM_LAYERS, warmups, layout, cache, cache, 4
        )
        gate = AdapterGate(NUM_LAYERS, torch.device("cpu"))
        gate.set_step(depths, warmups, layout)
        row_depths = np.concatenate(depths)[layout.order]
        if (row_depths == NUM_LAYERS).all():
            assert gate.layer_rows is None  # nothing to compute for the adapter
            continue
        for layer, plan in enumerate(ctx.layer_plans):
            running = np.arange(plan.num_tokens) if plan.rows is None else plan.rows.numpy()
            expected = np.flatnonzero(row_depths[running] < NUM_LAYERS).tolist()
            rows = gate.layer_rows[layer]
            kinds.add(type(rows).__name__)
            assert _gated_places(rows, len(running)) == expected, (depths, warmups, layer)
    assert kinds == {"NoneType", "int", "Tensor"}  # every form of the gate was checked
