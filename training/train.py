"""Skip-aware fine-tuning (``skipdecode train``) on E2E or chat data, full or LoRA, CPU or CUDA.

Each batch samples one schedule from the configured speedups (mixed-speedup training) and runs
the skip-aware teacher-forcing forward (:mod:`skip_forward`); :mod:`loop` runs the steps and
:mod:`checkpoint` saves the resumable state and the servable model directory.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from skipdecode import datasets
from skipdecode.checkpoint_schedule import family_to_dict, skip_to_dict
from skipdecode.model_runner.weights import resolve_model_path
from skipdecode.scheduler import PresetFamily, SkipConfig
from skipdecode.scheduler.skip import PRESET_DEPTH_RATIO
from skipdecode.training import chat, checkpoint, e2e
from skipdecode.training.data import DEFAULT_KL_WEIGHT, OBJECTIVES, load_training_data
from skipdecode.training.e2e_split import DEFAULT_NAME_VAL_PERCENT, SPLITS
from skipdecode.training.gated_lora import APPLY_TO, gate_lora
from skipdecode.training.loop import TrainLoop
from skipdecode.training.modeling import (
    apply_lora,
    load_causal_lm,
    load_teacher,
    load_training_tokenizer,
    pick_device,
)

DEFAULT_LR = {"full": 1e-4, "lora": 1e-3}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run is built from (``skipdecode train`` flags)."""

    out_dir: str
    model: str | None = None  # HF dir or .gguf; None: the default SmolLM2-135M-Instruct
    data: str = e2e.DEFAULT_E2E_CSV  # E2E CSV, or chat data: "sharegpt", .jsonl, .json
    val_percent: int | None = None  # None: 15 for E2E, 2 for chat data
    test_percent: int = datasets.DEFAULT_TEST_PERCENT  # chat data only
    max_rows: int | None = None  # use only the first rows / training prompts
    split_by: str = "mr"  # E2E: "mr" or "name" (training/e2e_split.py)
    name_val_percent: int = DEFAULT_NAME_VAL_PERCENT  # E2E, split_by="name": unseen names
    substitute: float = 0.0  # E2E: share of training rows with invented names (e2e_substitute)
    copy_prompts: int = 0  # chat distill: synthetic copy prompts added (training/copy_prompts.py)
    objective: str = "ce"  # ce | kl | distill (see training/data.py)
    max_prompt_tokens: int = chat.DEFAULT_MAX_PROMPT_TOKENS  # chat data only
    max_answer_tokens: int = chat.DEFAULT_MAX_ANSWER_TOKENS  # chat data only
    teacher_cache: str | None = None  # distill: where teacher answers are cached (OUT/teacher)
    method: str = "full"  # "full" or "lora"
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_apply_to: str = "all"  # "skipping": the adapter changes only tokens that skip layers
    speedups: tuple[float, ...] = (1.0,)  # each batch samples one of these presets
    decay_tokens: int = e2e.DEFAULT_DECAY_TOKENS
    warmup_layers: int = 1
    depth_ratio: float = PRESET_DEPTH_RATIO  # preset shape (PresetFamily): D_max / D_min sought
    horizon_tokens: int | None = None  # presets meet their speedup at N = this (None: decay)
    default_speedup: float | None = None  # served by default; None: the largest of `speedups`
    kl_weight: float | None = None  # None: 1 for the kl and distill objectives, else 0
    teacher: str | None = None  # None with kl_weight > 0: the initial model
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    lr: float | None = None  # None: DEFAULT_LR[method]
    lr_warmup_steps: int = 10
    max_grad_norm: float = 1.0
    dtype: str = "auto"  # bf16 autocast, fp32 (none), or auto: bf16 unless the CPU lacks it
    device: str = "auto"
    seed: int = 0
    save_every: int = 50
    resume: bool = False

    def __post_init__(self) -> None:
        if self.val_percent is None:  # defaults filled once, at construction
            chat_data = datasets.is_chat_data(self.data)
            default = datasets.DEFAULT_VAL_PERCENT if chat_data else e2e.DEFAULT_VAL_PERCENT
            object.__setattr__(self, "val_percent", default)
        if self.kl_weight is None and self.objective in OBJECTIVES:
            object.__setattr__(self, "kl_weight", DEFAULT_KL_WEIGHT[self.objective])
        checks = {
            f"objective must be one of {', '.join(OBJECTIVES)}": self.objective in OBJECTIVES,
            "max_prompt_tokens and max_answer_tokens must be >= 1": self.max_prompt_tokens >= 1
            and self.max_answer_tokens >= 1,
            "method must be full or lora": self.method in ("full", "lora"),
            "lora_apply_to must be all or skipping": self.lora_apply_to in APPLY_TO,
            "lora_apply_to=skipping needs method lora": self.lora_apply_to == "all"
            or self.method == "lora",
            f"split_by must be one of {', '.join(SPLITS)}": self.split_by in SPLITS,
            "name_val_percent must be in [0, 100]": 0 <= self.name_val_percent <= 100,
            "substitute must be in [0, 1]": 0.0 <= self.substitute <= 1.0,
            "copy_prompts must be >= 0": self.copy_prompts >= 0,
            "dtype must be auto, bf16 or fp32": self.dtype in ("auto", "bf16", "fp32"),
            "speedups must be a non-empty list of numbers >= 1": bool(self.speedups)
            and all(s >= 1 for s in self.speedups),
            "epochs must be > 0": self.epochs > 0,
            "batch_size must be >= 1": self.batch_size >= 1,
            "max_steps must be >= 1": self.max_steps is None or self.max_steps >= 1,
            "kl_weight must be >= 0": self.kl_weight >= 0,
            "save_every must be >= 1": self.save_every >= 1,
            "default_speedup must be 1 or one of speedups": self.default_speedup is None
            or self.default_speedup == 1.0
            or self.default_speedup in self.speedups,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(f"TrainConfig: {message}")
        try:
            _ = self.preset_family
        except ValueError as exc:
            raise ValueError(f"TrainConfig: {exc}") from exc

    @property
    def preset_family(self) -> PresetFamily:
        """How the run's speedup presets resolve; recorded in the checkpoint for serving."""
        return PresetFamily(
            self.warmup_layers, self.decay_tokens, self.depth_ratio, self.horizon_tokens
        )

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def fingerprint(self) -> dict[str, Any]:
        """Settings a resumed run must share with the saved one."""
        ignored = {"out_dir", "device", "save_every", "resume", "teacher_cache"}
        fields = {k: v for k, v in asdict(self).items() if k not in ignored}
        fields["speedups"] = list(self.speedups)
        # Runs saved before these options existed still resume when they keep the defaults.
        if not self.copy_prompts:
            del fields["copy_prompts"]
        if self.depth_ratio == PRESET_DEPTH_RATIO and self.horizon_tokens is None:
            del fields["depth_ratio"], fields["horizon_tokens"]
        return fields


def preset_skips(cfg: TrainConfig) -> list[SkipConfig]:
    """One speedup preset per configured speedup, with the run's decay and warm-up."""
    return [SkipConfig.for_speedup(x, cfg.decay_tokens, cfg.warmup_layers) for x in cfg.speedups]


def linear_warmup_decay(total_steps: int, warmup_steps: int):
    """LR factor per step: linear warm-up to 1, then linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def train(cfg: TrainConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume, or skip if finished) one training run; returns its summary."""
    out_dir = Path(cfg.out_dir)
    if _already_finished(cfg):
        return json.loads((out_dir / checkpoint.SUMMARY_FILE).read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = pick_device(cfg.device)
    tokenizer = load_training_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, device)
    data = load_training_data(cfg, tokenizer, model.config.max_position_embeddings)
    examples = data.examples
    skips = preset_skips(cfg)
    family = cfg.preset_family
    schedules = [s.resolve(model.config.num_hidden_layers, family) for s in skips]  # fail early
    teacher = load_teacher(cfg.teacher or cfg.model, device) if cfg.kl_weight > 0 else None
    if cfg.method == "lora":
        model = apply_lora(model, cfg.lora_rank, cfg.lora_alpha)
        if cfg.lora_apply_to == "skipping":
            gate_lora(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    total_steps = min(total_steps, cfg.max_steps or total_steps)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_warmup_decay(total_steps, cfg.lr_warmup_steps)
    )
    fingerprint = cfg.fingerprint()
    resumed = checkpoint.load_state(out_dir, model, optimizer, lr_schedule, fingerprint)
    start_step, progress = resumed or (0, {"seconds": 0.0, "tokens": 0, "target_tokens": 0})
    loop = TrainLoop(cfg, model, teacher, optimizer, lr_schedule, examples, schedules, tokenizer)
    last_loss = loop.run(start_step, total_steps, progress, fingerprint, show_progress)
    _save_checkpoint(cfg, model, tokenizer, skips, schedules, data)
    summary = {
        "steps": total_steps,
        "epochs": total_steps / steps_per_epoch,
        "num_train_rows": len(examples),
        "batch_size": cfg.batch_size,
        "wall_seconds": round(progress["seconds"], 1),
        "tokens": progress["tokens"],
        "target_tokens": progress["target_tokens"],
        "tokens_per_second": round(progress["tokens"] / max(progress["seconds"], 1e-9), 1),
        "final_loss": last_loss,
        "device": str(device),
        "config": fingerprint,
    }
    checkpoint.write_summary(out_dir, summary)
    checkpoint.remove_state(out_dir)
    return summary


def _already_finished(cfg: TrainConfig) -> bool:
    """True for a finished run under ``--resume``; refuses to overwrite a run without it."""
    out_dir = Path(cfg.out_dir)
    if checkpoint.is_finished(out_dir):
        if not cfg.resume:
            raise ValueError(f"{out_dir} holds a finished run; pass --resume to keep it")
        saved = json.loads((out_dir / checkpoint.SUMMARY_FILE).read_text()).get("config", {})
        changed = checkpoint.settings_changed(saved, cfg.fingerprint())
        if changed:
            raise ValueError(
                f"{out_dir} holds a finished run with other settings ({changed}); "
                "pick another --out"
            )
        return True
    if (out_dir / checkpoint.STATE_FILE).exists() and not cfg.resume:
        raise ValueError(f"{out_dir} holds a started run: pass --resume, or pick another --out")
    return False


def _save_checkpoint(cfg: TrainConfig, model, tokenizer, skips, schedules, data) -> None:
    """The servable directory, with the schedules, data split and prompt format recorded."""
    default = cfg.default_speedup or max(cfg.speedups)
    extra = {
        "trained_for": [
            {"speedup": k.speedup, "skip": skip_to_dict(k), "resolved": asdict(s)}
            for k, s in zip(skips, schedules)
        ],
        "default_speedup": default,
        "preset_family": family_to_dict(cfg.preset_family),
        "data": data.record,
        "prompt_format": data.prompt_format,
        "objective": {"name": cfg.objective, "kl_weight": cfg.kl_weight},
    }
    if default in cfg.speedups:
        default_skip = skips[cfg.speedups.index(default)]
    else:  # 1x: full depth
        default_skip = SkipConfig.for_speedup(1.0, cfg.decay_tokens, cfg.warmup_layers)
    base_model = os.path.basename(resolve_model_path(cfg.model))
    trained_with = {"trained_with": cfg.fingerprint()}
    checkpoint.save_final(
        cfg.out_dir, model, tokenizer, default_skip, skips, extra, base_model, trained_with
    )
