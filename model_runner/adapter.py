"""LoRA adapters merged into the base weights while they stream into the model.

An adapter is a directory::

    adapter.safetensors   {prefix}.lora_A [rank, in], {prefix}.lora_B [out, rank] per adapted
                          linear (prefix: the Hugging Face module name, e.g.
                          ``model.layers.3.self_attn.q_proj``); optionally full replacement
                          tensors under a parameter's own name (e.g. ``model.norm.weight``)
    adapter_config.json   {"format": "skipdecode-lora", "version": 1, "rank": r, "alpha": a,
                           "base_model": ..., "target_modules": [...], "apply_to": ...,
                           ...free extras}
    skip_schedule.json    optional, the schedule the adapter was trained for
                          (skipdecode/checkpoint_schedule.py)

``apply_to`` (optional) says which tokens the adapter changes:

- ``"all"`` (the default when the key is absent): every token. The adapter is merged,
  ``W + (alpha / rank) * B @ A``, once at load: it costs nothing per token, and everything
  downstream (fusing, CPU packing, dtype) sees ordinary weights.
- ``"skipping"``: only tokens that bypass layers (depth ``D < L``). Full-depth tokens (every
  prompt token, generated tokens at ``D == L``) see the base model exactly, so the model served
  at 1x is the base model. The weights stay unmerged and each adapted linear adds the LoRA
  update on the skipping rows of each step (model_runner/gated_adapter.py). Such an adapter
  holds LoRA pairs only: a replacement tensor cannot be applied to some tokens only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT_NAME = "skipdecode-lora"
FORMAT_VERSION = 1
LORA_A, LORA_B = ".lora_A", ".lora_B"
_RESERVED_KEYS = ("format", "version", "rank", "alpha", "base_model", "target_modules", "apply_to")
APPLY_TO = ("all", "skipping")  # which tokens an adapter changes (module docstring)


@dataclass
class Adapter:
    """A validated adapter: LoRA pairs keyed by the weight they update, plus replacements."""

    path: str
    rank: int
    alpha: float
    base_model: str | None
    config: dict[str, Any]
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (A, B)
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)
    apply_to: str = "all"  # one of APPLY_TO: merged at load, or gated to skipping tokens

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _shipped_dir() -> Path:
    # The package's own copy when installed from a wheel; the source tree in editable installs
    # (model_runner/ maps to skipdecode.model_runner, so the parent is not skipdecode/).
    import skipdecode

    return Path(skipdecode.__file__).resolve().parent / "adapters" / "smollm2-135m-skip"


# The adapter trained for the default model, shipped as package data (skipdecode/adapters/).
SHIPPED_ADAPTER_DIR = _shipped_dir()


def shipped_adapter_path() -> str | None:
    """The adapter shipped for the default model, or None until its weights are in the package."""
    if (SHIPPED_ADAPTER_DIR / WEIGHTS_FILE).is_file():
        return str(SHIPPED_ADAPTER_DIR)
    return None


def serves_by_default(path: str | os.PathLike) -> bool:
    """Whether an adapter is marked to be merged whenever its base model loads with
    ``adapter="auto"`` (``"serve_by_default": true`` in its config). A shipped adapter that
    costs quality at full depth stays opt-in (``adapter="shipped"``) until it no longer does."""
    return _read_config(Path(path) / CONFIG_FILE).get("serve_by_default") is True


def _bad(file: str | Path, problem: str) -> ValueError:
    return ValueError(f"invalid adapter file {file}: {problem}")


def _read_config(file: Path) -> dict[str, Any]:
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(file, str(exc)) from exc
    if not isinstance(record, dict):
        raise _bad(file, "expected a JSON object")
    if record.get("format") != FORMAT_NAME or record.get("version") != FORMAT_VERSION:
        raise _bad(file, f"expected format {FORMAT_NAME!r} version {FORMAT_VERSION}")
    rank, alpha = record.get("rank"), record.get("alpha")
    # bool is an int subclass: reject it explicitly so `true` is not a rank of 1.
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise _bad(file, f"'rank' must be a positive integer (got {rank!r})")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise _bad(file, f"'alpha' must be a number (got {alpha!r})")
    apply_to = record.get("apply_to", "all")
    if apply_to not in APPLY_TO:
        raise _bad(file, f"'apply_to' must be one of {list(APPLY_TO)} (got {apply_to!r})")
    return record


def _split_tensors(
    tensors: dict[str, torch.Tensor], rank: int, file: Path
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """LoRA pairs keyed by ``{prefix}.weight``, and the remaining (replacement) tensors."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    replacements = {}
    for name, tensor in tensors.items():
        suffix = next((s for s in (LORA_A, LORA_B) if name.endswith(s)), None)
        if suffix is None:
            replacements[name] = tensor
        else:
            halves.setdefault(name[: -len(suffix)], {})[suffix] = tensor
    lora = {}
    for prefix, pair in sorted(halves.items()):
        missing = [prefix + s for s in (LORA_A, LORA_B) if s not in pair]
        if missing:
            raise _bad(file, f"{missing[0]} is missing (LoRA tensors come in A/B pairs)")
        a, b = pair[LORA_A], pair[LORA_B]
        if a.dim() != 2 or b.dim() != 2:
            raise _bad(file, f"{prefix}: lora_A and lora_B must be 2-D matrices")
        if a.shape[0] != rank or b.shape[1] != rank:
            raise _bad(
                file,
                f"{prefix}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not have the"
                f" configured rank {rank} (A is [rank, in], B is [out, rank])",
            )
        lora[f"{prefix}.weight"] = (a, b)
    both = sorted(set(lora) & set(replacements))
    if both:
        raise _bad(file, f"{both[0]} is both replaced and LoRA-updated")
    return lora, replacements


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read and validate the adapter directory ``path``; any problem is a ValueError naming the
    file at fault."""
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"adapter directory not found: {directory}")
    config_file, weights_file = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for file in (config_file, weights_file):
        if not file.is_file():
            raise ValueError(f"adapter {directory} has no {file.name} ({file} is missing)")
    record = _read_config(config_file)
    try:
        tensors = load_file(str(weights_file))
    except (OSError, SafetensorError) as exc:
        raise _bad(weights_file, str(exc)) from exc
    if not tensors:
        raise _bad(weights_file, "holds no tensors")
    lora, replacements = _split_tensors(tensors, record["rank"], weights_file)
    apply_to = record.get("apply_to", "all")
    if apply_to == "skipping" and replacements:
        raise _bad(weights_file, _gated_replacement_problem(replacements))
    base_model = record.get("base_model")
    return Adapter(
        path=str(directory),
        rank=record["rank"],
        alpha=float(record["alpha"]),
        base_model=base_model if isinstance(base_model, str) else None,
        config=record,
        lora=lora,
        replacements=replacements,
        apply_to=apply_to,
    )


def _gated_replacement_problem(replacements: Iterable[str]) -> str:
    names = sorted(replacements)
    return (
        f"an adapter with apply_to 'skipping' holds LoRA pairs only, but {names[0]} is a full"
        " replacement tensor (a replacement cannot apply to skipping tokens only)"
    )


def merge_weights(
    weights: Iterable[tuple[str, torch.Tensor]], adapter: Adapter
) -> Iterator[tuple[str, torch.Tensor]]:
    """``weights`` with the adapter applied: ``W + scale * B @ A`` (computed in float32, then
    cast back to W's dtype) for each LoRA target, and replacement tensors in place of theirs.

    A shape mismatch fails when the tensor is seen; an adapter tensor whose target the
    checkpoint never yields fails once the stream ends (a silently unmerged adapter would serve
    the base model under the adapter's name).
    """
    if adapter.apply_to != "all":
        raise ValueError(
            f"adapter {adapter.path} applies to {adapter.apply_to!r} tokens only and cannot be"
            " merged into the weights (model_runner/gated_adapter.py applies it)"
        )
    pending = {**adapter.lora, **adapter.replacements}
    for name, tensor in weights:
        # Some checkpoints omit the "model." prefix (OPT); the adapter uses the full name.
        key = name if name in pending else f"model.{name}"
        if key not in pending:
            yield name, tensor
            continue
        update = pending.pop(key)
        if isinstance(update, tuple):
            yield name, _merge_lora(key, tensor, update, adapter.scale, adapter.path)
        else:
            if tuple(update.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"adapter {adapter.path}: {key} has shape {tuple(update.shape)}, the"
                    f" checkpoint tensor has {tuple(tensor.shape)}"
                )
            yield name, update
    if pending:
        names = sorted(pending)
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise ValueError(
            f"adapter {adapter.path} targets {len(names)} tensor(s) the checkpoint does not"
            f" have: {shown}"
        )


def _merge_lora(
    name: str,
    weight: torch.Tensor,
    pair: tuple[torch.Tensor, torch.Tensor],
    scale: float,
    where: str,
) -> torch.Tensor:
    a, b = pair
    expected = (b.shape[0], a.shape[1])
    if tuple(weight.shape) != expected:
        raise ValueError(
            f"adapter {where}: {name} is {tuple(weight.shape)} in the checkpoint, but its LoRA"
            f" pair makes {expected} (lora_B rows x lora_A columns)"
        )
    # float32 whatever the stored dtypes: a bf16 B @ A would round the small update away.
    delta = b.to(torch.float32) @ a.to(torch.float32)
    return (weight.to(torch.float32) + scale * delta).to(weight.dtype)


def save_adapter(
    directory: str | os.PathLike,
    lora_tensors: dict[str, torch.Tensor],
    rank: int,
    alpha: float,
    base_model: str | None,
    extra: dict[str, Any] | None = None,
    apply_to: str = "all",
) -> Path:
    """Write an adapter directory from tensors named as in the module docstring, then load it
    back (the writer cannot drift from the reader). ``extra``: JSON-ready config fields such as
    the training recipe. ``apply_to``: which tokens the adapter changes (module docstring);
    written to the config unless it is the default ``"all"``, so merged adapters keep the
    files they always had. Returns the directory."""
    directory = Path(directory)
    clashes = sorted(set(extra or {}) & set(_RESERVED_KEYS))
    if clashes:
        raise ValueError(f"save_adapter: extra must not set {clashes}")
    if apply_to not in APPLY_TO:
        raise ValueError(f"save_adapter: apply_to must be one of {list(APPLY_TO)}")
    replaced = [n for n in lora_tensors if not n.endswith((LORA_A, LORA_B))]
    if apply_to == "skipping" and replaced:
        raise ValueError(f"save_adapter: {_gated_replacement_problem(replaced)}")
    targets = sorted(
        {name[: -len(LORA_A)].rsplit(".", 1)[-1] for name in lora_tensors if name.endswith(LORA_A)}
    )
    record = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "rank": rank,
        "alpha": alpha,
        "base_model": base_model,
        "target_modules": targets,
        **({} if apply_to == "all" else {"apply_to": apply_to}),
        **(extra or {}),
    }
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors stores CPU, contiguous tensors that share no memory (tied views would fail).
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in lora_tensors.items()}
    save_file(plain, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    load_adapter(directory)
    return directory
