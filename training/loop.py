"""The optimisation loop of one training run: deterministic batches and schedules per step.

The data order and the schedule of every step derive from ``seed`` and the step number alone, so
a resumed run sees exactly the batches and schedules an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from skipdecode.config import cpu_has_fast_bf16
from skipdecode.scheduler import DepthSchedule
from skipdecode.training import checkpoint
from skipdecode.training.batch import Example, collate
from skipdecode.training.objective import skip_aware_loss

LENGTH_GROUP_BATCHES = 16  # batches per length-sorted chunk


def batch_indices(step: int, lengths: list[int], batch_size: int, seed: int) -> list[int]:
    """Example indices of ``step``, derived from (seed, epoch) alone.

    Each epoch: a seeded permutation, cut into chunks of 16 batches; each chunk is sorted by
    length before it is cut into batches (little padding), and the batches are shuffled.
    """
    num_examples = len(lengths)
    steps_per_epoch = math.ceil(num_examples / batch_size)
    epoch, index = divmod(step, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed * 7919 + epoch)
    order = torch.randperm(num_examples, generator=generator).tolist()
    chunk = batch_size * LENGTH_GROUP_BATCHES
    batches: list[list[int]] = []
    for start in range(0, num_examples, chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return batches[shuffled[index]]


def schedule_index(step: int, num_schedules: int, seed: int) -> int:
    """Which schedule ``step`` trains (uniform over the set)."""
    return random.Random(seed * 1_000_003 + step).randrange(num_schedules)


class TrainLoop:
    """Runs the steps of one run; the model, optimizer and LR schedule own its state."""

    def __init__(self, cfg, model, teacher, optimizer, lr_schedule, examples, schedules, tok):
        self.cfg, self.model, self.teacher = cfg, model, teacher
        self.optimizer, self.lr_schedule = optimizer, lr_schedule
        self.examples: list[Example] = examples
        self.lengths = [ex.num_tokens for ex in examples]
        self.schedules: list[DepthSchedule] = schedules
        self.pad_id: int = tok.pad_token_id
        self.device = next(model.parameters()).device

    def autocast(self):
        """bf16 autocast on the model's device, or nothing for fp32 (and for ``auto`` on a CPU
        without native bf16, where autocast would make every matmul several times slower)."""
        dtype = self.cfg.dtype
        if dtype == "auto":
            fast = self.device.type != "cpu" or cpu_has_fast_bf16()
            dtype = "bf16" if fast else "fp32"
        if dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def step(self, step: int) -> dict[str, Any]:
        """One optimisation step; returns its log record."""
        cfg = self.cfg
        began = time.perf_counter()
        indices = batch_indices(step, self.lengths, cfg.batch_size, cfg.seed)
        batch = collate([self.examples[i] for i in indices], self.pad_id).to(self.device)
        which = schedule_index(step, len(self.schedules), cfg.seed)
        lr = self.lr_schedule.get_last_lr()[0]
        with self.autocast():
            loss, parts = skip_aware_loss(
                self.model, batch, self.schedules[which], self.teacher, cfg.kl_weight
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm
        )
        self.optimizer.step()
        self.lr_schedule.step()
        seconds = time.perf_counter() - began
        return {
            "step": step + 1,
            "speedup": cfg.speedups[which],
            "lr": lr,
            **asdict(parts),
            "tokens": batch.num_tokens,
            "target_tokens": batch.num_target_tokens,
            "seconds": seconds,
            "tokens_per_s": batch.num_tokens / seconds,
        }

    def run(
        self, start: int, total: int, progress: dict, fingerprint: dict, show: bool
    ) -> float | None:
        """Steps ``start..total-1``; saves the resumable state every ``save_every`` steps."""
        from tqdm import tqdm

        cfg, out_dir = self.cfg, Path(self.cfg.out_dir)
        log_path = out_dir / "train_log.jsonl"
        _truncate_log(log_path, start)  # steps after the saved state are about to be redone
        bar = tqdm(total=total, initial=start, desc="train", disable=not show, unit="step")
        loss, rate, last = None, None, None
        with open(log_path, "a", encoding="utf-8") as log:
            for step in range(start, total):
                record = self.step(step)
                for key in ("seconds", "tokens", "target_tokens"):
                    progress[key] += record[key]
                last = record["loss"]
                loss = last if loss is None else 0.9 * loss + 0.1 * last
                rate = (
                    record["tokens_per_s"]
                    if rate is None
                    else 0.9 * rate + 0.1 * record["tokens_per_s"]
                )
                log.write(json.dumps(record) + "\n")
                bar.set_postfix(
                    loss=f"{loss:.3f}",
                    kl=f"{record['kl']:.3f}",
                    x=record["speedup"],
                    tok_s=f"{rate:.0f}",
                )
                bar.update(1)
                if (step + 1) % cfg.save_every == 0 or step + 1 == total:
                    log.flush()
                    checkpoint.save_state(
                        out_dir,
                        self.model,
                        self.optimizer,
                        self.lr_schedule,
                        step + 1,
                        progress,
                        fingerprint,
                    )
        bar.close()
        return last


def _truncate_log(path: Path, num_steps: int) -> None:
    """Keep only the first ``num_steps`` steps' records of a training log."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= num_steps]
    path.write_text("".join(line + "\n" for line in kept))
