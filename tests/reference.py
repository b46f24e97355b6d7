"""A slow, obviously-correct reference of SkipDecode built from Hugging Face modules.

Every step recomputes the whole sequence from scratch (no KV cache, no batching). At each layer
it takes the positions whose depth runs that layer (DESIGN.md §2), runs the Hugging Face decoder
layer on exactly those positions with a causal mask among them, and lets every other position
bypass the layer unchanged.
"""

from __future__ import annotations

import torch

from skipdecode.scheduler import DepthSchedule


def depths_of(prompt_len: int, num_tokens: int, schedule: DepthSchedule) -> list[int]:
    return [
        schedule.num_layers if p < prompt_len else schedule.depth(p - prompt_len)
        for p in range(num_tokens)
    ]


@torch.no_grad()
def reference_logits(
    hf_model, token_ids: list[int], depths: list[int], warmup: int, before_layer=None
):
    """Logits at every position when position ``p`` runs ``depths[p]`` layers.

    ``before_layer(index, positions)``, when given, is called before each layer runs on the
    positions (a LongTensor) that run it."""
    kind = hf_model.config.model_type
    decoder = hf_model.model.decoder if kind == "opt" else hf_model.model
    ids = torch.tensor([token_ids])
    positions = torch.arange(len(token_ids))
    hidden = decoder.embed_tokens(ids)
    if kind == "opt":
        if decoder.project_in is not None:
            hidden = decoder.project_in(hidden)
        hidden = hidden + decoder.embed_positions.weight[positions + 2][None]
    num_layers = len(decoder.layers)
    for index, layer in enumerate(decoder.layers):
        runs = [index < warmup or index >= num_layers - (d - warmup) for d in depths]
        if min(depths) == num_layers:  # no skipping: every position runs every layer
            runs = [True] * len(depths)
        idx = torch.tensor([p for p, r in enumerate(runs) if r], dtype=torch.long)
        if len(idx) == 0:
            continue
        sub = hidden[:, idx]
        if before_layer is not None:
            before_layer(index, idx)
        n = len(idx)
        mask = torch.full((n, n), torch.finfo(sub.dtype).min).triu(1)[None, None]
        if kind == "opt":
            out = layer(sub, attention_mask=mask, position_ids=idx[None])
        else:
            cos_sin = decoder.rotary_emb(sub, idx[None])
            out = layer(
                sub, attention_mask=mask, position_ids=idx[None], position_embeddings=cos_sin
            )
        out = out[0] if isinstance(out, tuple) else out
        hidden[:, idx] = out
    if kind == "opt":
        if decoder.final_layer_norm is not None:
            hidden = decoder.final_layer_norm(hidden)
        if decoder.project_out is not None:
            hidden = decoder.project_out(hidden)
    else:
        hidden = decoder.norm(hidden)
    return hf_model.lm_head(hidden)[0]


def reference_generate(
    hf_model,
    prompt: list[int],
    schedule: DepthSchedule,
    max_tokens: int,
    eos: set[int] = frozenset(),
) -> list[int]:
    """Greedy generation, recomputing everything at every step."""
    tokens = list(prompt)
    for _ in range(max_tokens):
        depths = depths_of(len(prompt), len(tokens), schedule)
        logits = reference_logits(hf_model, tokens, depths, schedule.warmup_layers)
        next_id = int(logits[-1].argmax())
        tokens.append(next_id)
        if next_id in eos:
            break
    return tokens[len(prompt) :]
