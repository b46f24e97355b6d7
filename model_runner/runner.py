"""The model runner: one pass over the layers per step, then logits and sampling."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from skipdecode.model_runner.context import (
    StepLayout,
    build_step_context,
    flatten_ints,
    sort_by_start_layer,
)
from skipdecode.model_runner.cpu_kernels import cpu_kernels
from skipdecode.model_runner.grammar_mask import GrammarMasker
from skipdecode.model_runner.prompt_logprobs import plan_prompt_scoring, score_prompts
from skipdecode.model_runner.sampler import (
    Sampler,
    SamplerOutput,
    SamplingBatch,
    is_plain_greedy,
)
from skipdecode.scheduler.outputs import RunnerOutput, ScheduledSequence, SchedulerOutput


class ModelRunner:
    """Executes scheduled steps on one device.

    Owns the model weights, the KV pool tensors (``num_blocks * block_size`` slots shared by all
    layers) and per-request sampling generators. Never changes scheduler state.
    """

    def __init__(
        self,
        model: nn.Module,
        num_blocks: int,
        block_size: int,
        kv_head_shape: tuple[int, int],
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.num_layers: int = model.num_layers
        self.vocab_size: int = model.config.vocab_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        # Head-major [kv_heads, slots, head_dim]: a gather of whole blocks is then already laid
        # out as attention's [kv_heads, seqs, keys, head_dim] operand (no transposed copy).
        num_kv_heads, head_dim = kv_head_shape
        shape = (num_kv_heads, num_blocks * block_size, head_dim)
        self.key_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.value_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.kernels = cpu_kernels(self.device, self.dtype)  # None: PyTorch ops
        self.sampler = Sampler()
        self.masker = GrammarMasker(self.vocab_size)  # structured outputs (grammar_mask.py)
        # A gated adapter's gate (gated_adapter.py), set once per step; None without one.
        self.adapter_gate = getattr(model, "adapter_gate", None)
        self._generators: dict[str, torch.Generator] = {}

    @staticmethod
    def bytes_per_block(block_size: int, kv_head_shape: tuple[int, int], dtype: torch.dtype) -> int:
        """KV bytes of one block: keys and values of ``block_size`` positions of one layer."""
        num_kv_heads, head_dim = kv_head_shape
        return 2 * block_size * num_kv_heads * head_dim * dtype.itemsize

    @torch.inference_mode()
    def run(self, scheduled: SchedulerOutput) -> RunnerOutput:
        """Run one step: every scheduled chunk in one pass, then sample where asked."""
        for request_id in scheduled.finished_request_ids:
            self._generators.pop(request_id, None)
        seqs = scheduled.sequences
        if not seqs:
            return RunnerOutput([], [], [])
        layout = sort_by_start_layer(
            [s.depths for s in seqs], [s.warmup_layers for s in seqs], self.num_layers
        )
        if self.adapter_gate is not None:
            self.adapter_gate.set_step(
                [s.depths for s in seqs], [s.warmup_layers for s in seqs], layout
            )
        flat_ids = flatten_ints([s.token_ids for s in seqs])
        input_ids = torch.from_numpy(flat_ids[layout.order]).to(self.device)
        ctx = build_step_context(
            depths=[s.depths for s in seqs],
            start_positions=[s.start_position for s in seqs],
            block_tables=[s.block_tables for s in seqs],
            num_layers=self.num_layers,
            warmup_layers=[s.warmup_layers for s in seqs],
            layout=layout,
            key_cache=self.key_cache,
            value_cache=self.value_cache,
            block_size=self.block_size,
            kernels=self.kernels,
        )
        sampled = [s for s in seqs if s.is_sampled]
        # Grammar masks depend only on tokens already sampled: fill them during the forward.
        constrained = [i for i, s in enumerate(sampled) if s.grammar is not None]
        mask_job = (
            self.masker.start([sampled[i].grammar for i in constrained]) if constrained else None
        )
        hidden = self.model(input_ids, ctx)  # [N, hidden]
        plan = plan_prompt_scoring(seqs, layout)  # None unless a chunk asks for prompt logprobs
        prompt_logprobs = score_prompts(plan, hidden, self.model.compute_logits) if plan else {}
        if not sampled:
            return RunnerOutput([], [], [], prompt_logprobs)
        rows = self._last_rows(seqs, layout)
        logits = self.model.compute_logits(hidden[rows])  # [num_sampled, vocab], model dtype
        if mask_job is not None:
            self.masker.apply(logits, torch.tensor(constrained), mask_job.result())
        params = [s.sampling_params for s in sampled]
        # Plain greedy rows need no per-row tensors: the sampler takes the argmax.
        batch = None if is_plain_greedy(params) else SamplingBatch.build(
            params=params,
            prompt_token_ids=[s.prompt_token_ids for s in sampled],
            output_token_ids=[s.output_token_ids for s in sampled],
            generators=[self._generator(s) for s in sampled],
            vocab_size=self.vocab_size,
            device=self.device,
        )  # fmt: skip
        output = _runner_output(sampled, self.sampler(logits, batch))
        output.prompt_logprobs = prompt_logprobs
        return output

    def _last_rows(self, seqs: list[ScheduledSequence], layout: StepLayout) -> torch.Tensor:
        # The last chunk token of each sampled sequence, as a row of the depth-sorted batch.
        ends = layout.chunk_offsets[1:] - 1
        is_sampled = np.array([s.is_sampled for s in seqs])
        return torch.from_numpy(layout.rows_of_flat[ends[is_sampled]]).to(self.device)

    def _generator(self, seq: ScheduledSequence) -> torch.Generator | None:
        # A seeded request draws only from its own generator, kept across steps, so its
        # tokens do not depend on what else shares the batch.
        seed = seq.sampling_params.seed
        if seed is None or seq.sampling_params.is_greedy:
            return None
        if seq.request_id not in self._generators:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            self._generators[seq.request_id] = generator
        return self._generators[seq.request_id]


def _runner_output(sampled: list[ScheduledSequence], out: SamplerOutput) -> RunnerOutput:
    token_ids = out.token_ids.tolist()
    logprobs: list[tuple[float, dict[int, float]] | None] = [None] * len(sampled)
    if out.logprobs is not None:
        chosen = out.logprobs.tolist()
        top_ids = out.top_token_ids.tolist() if out.top_token_ids is not None else None
        top_lps = out.top_logprobs.tolist() if out.top_logprobs is not None else None
        for i, seq in enumerate(sampled):
            num_top = seq.sampling_params.logprobs
            if num_top is None:
                continue
            top = {}
            if top_ids is not None and num_top > 0:
                top = dict(zip(top_ids[i][:num_top], top_lps[i][:num_top]))
            logprobs[i] = (chosen[i], top)
    return RunnerOutput([s.request_id for s in sampled], token_ids, logprobs)
