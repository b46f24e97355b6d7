"""The skip-aware training forward: teacher forcing with each position at its SkipDecode depth.

Prompt positions run every layer; the target token at position ``prompt_len + g`` runs ``D(g)``
layers (warm-up layers ``[0, w)``, then the top ``D - w``), exactly as the engine runs it when
that token is fed back (DESIGN.md §2).

The trick: at any layer, the positions of a sequence that run it are a prefix of the sequence
(``D(g)`` never increases), and attention is causal. So computing the layer on the whole padded
batch and keeping its output only where the position runs the layer,
``h = torch.where(runs[l][..., None], layer(h), h)``, gives exactly what the engine computes: a
kept position attends only to earlier positions, all of which ran the layer too; discarded
outputs never reach a kept one. The Hugging Face model stays untouched: forward hooks on its
decoder layers apply the ``where`` (LoRA, masks and positions keep working as usual).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from skipdecode.scheduler import DepthSchedule
from skipdecode.training.batch import Batch
from skipdecode.training.gated_lora import lora_gate


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a Llama/Qwen2/OPT causal LM (PEFT-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base.model
    layers = inner.decoder.layers if hasattr(inner, "decoder") else inner.layers
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"no decoder layer list found in {type(base).__name__}")
    return layers


def position_depths(
    prompt_lens: torch.Tensor, seq_len: int, schedule: DepthSchedule
) -> torch.Tensor:
    """[B, T] depth of every position: L on the prompt, ``D(p - prompt_len)`` after it."""
    # D(g) is constant once g >= decay_tokens, so a table over seq_len entries covers every g.
    table = torch.tensor([schedule.depth(g) for g in range(seq_len)], dtype=torch.long)
    positions = torch.arange(seq_len)[None, :]  # [1, T]
    generated = positions - prompt_lens.cpu()[:, None]  # [B, T] generated index g (< 0: prompt)
    depths = table[generated.clamp(0, seq_len - 1)]
    return torch.where(generated < 0, schedule.num_layers, depths)


def layer_runs(depths: torch.Tensor, schedule: DepthSchedule) -> torch.Tensor:
    """[L, B, T] bool: does each position run each layer (warm-up, or at/after its start layer)."""
    w = schedule.warmup_layers
    layers = torch.arange(schedule.num_layers)[:, None, None]  # [L, 1, 1]
    start = schedule.num_layers - (depths - w)  # [B, T] first layer after the warm-up
    return (layers < w) | (layers >= start[None])


@contextmanager
def skipping(model: nn.Module, runs: torch.Tensor) -> Iterator[None]:
    """Inside the block, layer ``l`` of ``model`` keeps its output only where ``runs[l]``."""
    layers = decoder_layers(model)
    if runs.shape[0] != len(layers):
        raise ValueError(f"runs covers {runs.shape[0]} layers, the model has {len(layers)}")
    is_full = runs.flatten(1).all(dim=1).tolist()  # one host sync per batch, not per layer
    gate = lora_gate(model)
    if gate is not None:  # gated LoRA: the update applies where a position skips a layer
        gate.mask = ~runs.all(dim=0)
    handles = [
        layer.register_forward_hook(_keep_where(runs[index]), with_kwargs=True)
        for index, layer in enumerate(layers)
        if not is_full[index]
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if gate is not None:
            gate.mask = None


def _keep_where(mask: torch.Tensor):
    """A forward hook: the layer's output where ``mask`` [B, T], its input elsewhere."""

    def hook(module, args, kwargs, output):
        hidden_in = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        mixed = torch.where(mask.to(out.device)[..., None], out, hidden_in.to(out.dtype))
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

    return hook


def first_predicting_row(batch: Batch) -> int:
    """The earliest row whose logits any target needs (the last prompt token of the shortest
    prompt); rows before it need no LM head."""
    return int(batch.prompt_lens.min()) - 1


def skip_forward(
    model: nn.Module, batch: Batch, schedule: DepthSchedule, from_row: int = 0
) -> torch.Tensor:
    """Logits [B, T - from_row, V] for rows ``from_row..T-1`` with every position at its depth.

    ``schedule`` may be full depth (then this is the plain forward).
    """
    seq_len = batch.input_ids.shape[1]
    runs = layer_runs(position_depths(batch.prompt_lens, seq_len, schedule), schedule)
    with skipping(model, runs.to(batch.input_ids.device)):
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            logits_to_keep=seq_len - from_row,
            use_cache=False,
        )
    return out.logits


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the decoder stack returning ``last_hidden_state``, the LM head) of an HF causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.get_output_embeddings()


def target_logits(
    model: nn.Module, batch: Batch, schedule: DepthSchedule, rows: torch.Tensor
) -> torch.Tensor:
    """Logits [N, V] of the rows selected by the bool mask ``rows`` [B, T] only.

    Same values as ``skip_forward(...)[rows]``, but the LM head (a fifth of a small model's
    FLOPs per token) runs on the selected rows alone, not on every prompt position.
    """
    seq_len = batch.input_ids.shape[1]
    runs = layer_runs(position_depths(batch.prompt_lens, seq_len, schedule), schedule)
    decoder, head = causal_lm_parts(model)
    with skipping(model, runs.to(batch.input_ids.device)):
        hidden = decoder(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state  # [B, T, H]
    return head(hidden[rows])
