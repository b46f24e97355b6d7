"""Hand-made LoRA adapters for the tiny Llama of tests/tiny_models.py, and a reference merge.

The reference merge works on the checkpoint file itself, in float64, with none of the code under
test: ``W + (alpha / rank) * B @ A`` per target, replacements swapped in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RANK, ALPHA = 4, 8.0  # scale 2
# (module prefix, out_features, in_features) in the tiny Llama (hidden 64, 2 kv heads of 16).
TARGETS = (
    ("model.layers.0.self_attn.q_proj", 64, 64),
    ("model.layers.3.self_attn.k_proj", 32, 64),
    ("model.layers.5.mlp.down_proj", 64, 128),
)
REPLACED = {"model.norm.weight": (64,)}


def lora_tensors(seed: int = 1, rank: int = RANK) -> dict[str, torch.Tensor]:
    """A/B pairs large enough to change greedy outputs, plus one replaced norm weight."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, out_features, in_features in TARGETS:
        tensors[f"{prefix}.lora_A"] = torch.randn(rank, in_features, generator=generator) * 0.3
        tensors[f"{prefix}.lora_B"] = torch.randn(out_features, rank, generator=generator) * 0.3
    for name, shape in REPLACED.items():
        tensors[name] = 1.0 + 0.5 * torch.rand(shape, generator=generator)
    return tensors


def write_adapter(
    directory: Path,
    tensors: dict[str, torch.Tensor],
    rank: int = RANK,
    alpha: float = ALPHA,
    **overrides,
) -> Path:
    """The on-disk format written by hand (not by save_adapter), so the reader is tested
    against the format rather than against its own writer."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(directory / "adapter.safetensors")
    )
    config = {
        "format": "skipdecode-lora",
        "version": 1,
        "rank": rank,
        "alpha": alpha,
        "base_model": "tiny-llama",
        "target_modules": ["q_proj", "k_proj", "down_proj"],
        **overrides,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


def reference_merge(
    checkpoint: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """Merged float64 copies of the adapted tensors (others are left out)."""
    merged = {}
    for name, tensor in tensors.items():
        if name.endswith(".lora_A"):
            prefix = name[: -len(".lora_A")]
            a, b = tensor.double(), tensors[f"{prefix}.lora_B"].double()
            merged[f"{prefix}.weight"] = checkpoint[f"{prefix}.weight"].double() + scale * b @ a
        elif not name.endswith(".lora_B"):
            merged[name] = tensor.double()
    return merged


def merged_model_dir(base: Path, target: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A copy of the HF model dir ``base`` whose float32 weights the test merged itself."""
    shutil.copytree(base, target)
    checkpoint = load_file(str(base / "model.safetensors"))
    for name, value in reference_merge(checkpoint, tensors, ALPHA / RANK).items():
        checkpoint[name] = value.to(torch.float32)
    save_file(checkpoint, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target
