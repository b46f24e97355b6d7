"""Training checkpoints: the resumable state, and the final servable model directory.

``OUT/resume/state.pt`` holds the trainable parameters, optimizer, LR schedule, step and RNG
states; ``--resume`` continues from it exactly. ``OUT/`` itself becomes a normal Hugging Face
model directory (LoRA merged, safetensors, config.json, tokenizer) plus ``skip_schedule.json``
(written through :mod:`skipdecode.checkpoint_schedule`, which the engine reads) and, last of all,
``train_summary.json``, whose presence marks a finished run (the resumable state is then
deleted: a finished run is never resumed, only skipped).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skipdecode.checkpoint_schedule import write_skip_schedule
from skipdecode.model_runner.adapter import LORA_A, LORA_B, save_adapter
from skipdecode.scheduler import SkipConfig
from skipdecode.training.gated_lora import lora_gate
from skipdecode.training.modeling import merged, trainable_parameters

STATE_FILE = Path("resume") / "state.pt"
ADAPTER_DIR = "adapter"
SUMMARY_FILE = "train_summary.json"


def rng_state() -> dict[str, Any]:
    """Python, torch and CUDA generator states."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    out_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    progress: dict[str, float],
    fingerprint: dict[str, Any],
) -> None:
    """Write the resumable state atomically (a crash mid-write leaves the previous one).

    ``progress`` carries running totals (seconds, tokens) that the summary reports.
    """
    path = Path(out_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "progress": progress,
        "params": {n: p.detach().cpu() for n, p in trainable_parameters(model).items()},
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "rng": rng_state(),
        "fingerprint": fingerprint,
    }
    staging = path.with_suffix(".tmp")
    torch.save(state, staging)
    os.replace(staging, path)


def settings_changed(saved: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    """The settings that differ between a saved run and this one, as ``key: old -> new`` pairs
    (empty when none do). Values compare after a JSON round trip, as summaries store them."""
    current = json.loads(json.dumps(fingerprint))
    saved = json.loads(json.dumps(saved))
    differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)


def load_state(
    out_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: dict[str, Any],
) -> tuple[int, dict[str, float]] | None:
    """Restore the state saved in ``out_dir``: (step to continue from, progress totals), or
    None when there is none.

    A state written by a run with a different fingerprint (model, method, data, schedules, batch
    size, seed...) is refused: continuing it would silently mix two runs.
    """
    path = Path(out_dir) / STATE_FILE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file
    changed = settings_changed(state["fingerprint"], fingerprint)
    if changed:
        raise ValueError(f"cannot resume {path}: the run's settings changed ({changed})")
    params = trainable_parameters(model)
    if set(params) != set(state["params"]):
        raise ValueError(f"cannot resume {path}: its parameters do not match this model")
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state["lr_schedule"])
    set_rng_state(state["rng"])
    return int(state["step"]), dict(state["progress"])


def save_final(
    out_dir: str | os.PathLike,
    model: nn.Module,
    tokenizer,
    default_skip: SkipConfig,
    schedules: list[SkipConfig],
    schedule_extra: dict[str, Any],
    base_model: str | None = None,
    adapter_extra: dict[str, Any] | None = None,
) -> nn.Module:
    """Save the servable model directory; returns the (LoRA-merged) model that was saved.

    A LoRA run also writes ``adapter/``: the adapter alone in the engine's format
    (:mod:`skipdecode.model_runner.adapter`) with its ``skip_schedule.json``. A gated LoRA run
    (``apply_to: "skipping"``) saves the base weights unmerged, full depth as their default.
    """
    out_dir = Path(out_dir)
    lora = lora_tensors(model)
    gated = lora_gate(model) is not None
    if lora:  # the adapter alone, servable with --adapter on the base model (a few MB)
        config = model.peft_config["default"]
        save_adapter(
            out_dir / ADAPTER_DIR,
            lora,
            config.r,
            config.lora_alpha,
            base_model,
            adapter_extra,
            apply_to="skipping" if gated else "all",
        )
        write_skip_schedule(out_dir / ADAPTER_DIR, default_skip, schedules, **schedule_extra)
    # A gated adapter cannot be merged (it would change full depth too): the directory keeps
    # the base weights and serves full depth by default; the adapter is served with --adapter.
    plain = model.unload() if gated else merged(model)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    full_depth = SkipConfig.for_speedup(1.0)
    write_skip_schedule(out_dir, full_depth if gated else default_skip, schedules, **schedule_extra)
    return plain


def write_summary(out_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    """The last file written: its presence means the run finished."""
    (Path(out_dir) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")


def remove_state(out_dir: str | os.PathLike) -> None:
    """Delete the resumable state of a finished run (optimizer moments: twice the model size)."""
    path = Path(out_dir) / STATE_FILE
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def is_finished(out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir`` holds a finished run (its summary was written)."""
    return (Path(out_dir) / SUMMARY_FILE).exists()


def lora_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A PEFT model's LoRA matrices (bf16) under the engine's adapter names
    (``model.layers.3.self_attn.q_proj.lora_A``); empty for a model without LoRA."""
    tensors = {}
    for name, param in model.named_parameters():
        for peft_part, ours in (
            (".lora_A.default.weight", LORA_A),
            (".lora_B.default.weight", LORA_B),
        ):
            if name.endswith(peft_part):
                module = name.removeprefix("base_model.model.")[: -len(peft_part)]
                # bf16 halves the shipped file; the merge upcasts to fp32 before adding
                tensors[module + ours] = param.detach().to("cpu", torch.bfloat16)
    return tensors
