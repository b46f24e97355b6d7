"""Gated LoRA in training: the update applies only at positions that skip layers."""

from __future__ import annotations

import json

import pytest
import torch
from reference import depths_of, reference_logits
from safetensors.torch import load_file
from tiny_models import NUM_LAYERS, load_hf

from skipdecode import SkipConfig
from skipdecode.cli import main
from skipdecode.training.batch import Example, collate
from skipdecode.training.gated_lora import gate_lora
from skipdecode.training.modeling import apply_lora, load_causal_lm
from skipdecode.training.skip_forward import skip_forward

EXAMPLES = [
    Example([11, 200, 3000, 45, 6], [17, 99, 400, 5, 8, 23, 71, 9, 2]),
    Example([1, 2], [300, 301, 302, 303, 304, 305, 306, 307]),
]
SKIP = SkipConfig(max_depth=7, min_depth=3, decay_tokens=6)


def _gated_model(directory):
    model = apply_lora(load_hf(directory), rank=4, alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():  # PEFT starts B at zero (no update): make the update visible
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    gate_lora(model)
    return model.eval()


def _slow_gated_reference(model, tokens: list[int], depths: list[int], warmup: int):
    """The base HF model with ``out + mask * scale * B(A(x))`` added by hooks on each adapted
    linear, mask = the running position skips some layer, layer by layer."""
    base = load_hf_like(model)
    modules = dict(base.named_modules())
    gated = torch.tensor([d < NUM_LAYERS for d in depths])
    current = {"mask": gated}
    handles = []
    for name, module in model.named_modules():
        if not name.endswith(".lora_A.default"):
            continue
        owner = name.removeprefix("base_model.model.").removesuffix(".lora_A.default")
        lora_a = module.weight
        lora_b = dict(model.named_modules())[name.replace("lora_A", "lora_B")].weight
        scale = model.peft_config["default"].lora_alpha / model.peft_config["default"].r

        def hook(_module, args, out, a=lora_a, b=lora_b, scale=scale):
            delta = scale * (args[0] @ a.T @ b.T)
            return out + current["mask"][None, :, None].to(out.dtype) * delta

        handles.append(modules[owner].register_forward_hook(hook))

    def before_layer(_index, positions):
        current["mask"] = gated[positions]

    try:
        return reference_logits(base, tokens, depths, warmup, before_layer)
    finally:
        for handle in handles:
            handle.remove()


def load_hf_like(peft_model):
    """A plain copy of the PEFT model's base weights (the adapters left out)."""
    base = peft_model.get_base_model()
    plain = type(base)(base.config)
    state = {
        k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k
    }
    plain.load_state_dict(state)
    return plain.eval()


@pytest.fixture(scope="module")
def gated(tiny_llama_dir):
    return _gated_model(tiny_llama_dir)


def test_full_depth_is_the_base_model_exactly(gated, tiny_llama_dir):
    base = load_hf(tiny_llama_dir)
    batch = collate(EXAMPLES, pad_id=0)
    full = SkipConfig().resolve(NUM_LAYERS)
    with torch.no_grad():
        assert torch.equal(skip_forward(gated, batch, full), skip_forward(base, batch, full))
        # outside a schedule the gate is shut: a plain forward is the base model too
        plain = gated(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        expected = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(plain, expected, atol=0, rtol=0)


def test_skipping_positions_match_the_slow_reference(gated, tiny_llama_dir):
    schedule = SKIP.resolve(NUM_LAYERS)
    batch = collate(EXAMPLES, pad_id=0)
    base = load_hf(tiny_llama_dir)
    with torch.no_grad():
        logits = skip_forward(gated, batch, schedule)
        base_logits = skip_forward(base, batch, schedule)
    for row, ex in enumerate(EXAMPLES):
        tokens = ex.prompt_ids + ex.target_ids
        depths = depths_of(len(ex.prompt_ids), len(tokens), schedule)
        with torch.no_grad():
            expected = _slow_gated_reference(gated, tokens, depths, schedule.warmup_layers)
        torch.testing.assert_close(logits[row, : len(tokens)], expected, atol=1e-4, rtol=0)
        prompt = len(ex.prompt_ids)
        # prompt positions run at full depth: no update; skipping positions: a visible one
        torch.testing.assert_close(logits[row, :prompt], base_logits[row, :prompt])
        assert (
            logits[row, prompt : len(tokens)] - base_logits[row, prompt : len(tokens)]
        ).abs().max() > 1e-2


def test_gated_training_run_saves_base_weights_and_a_gated_adapter(
    tiny_llama_dir, e2e_csv, tmp_path
):
    out = tmp_path / "gated"
    argv = ["train", "--model", str(tiny_llama_dir), "--out", str(out), "--data", str(e2e_csv)]
    argv += ["--val-percent", "0", "--max-steps", "2", "--batch-size", "2", "--method", "lora"]
    argv += ["--lora-apply-to", "skipping", "--speedups", "1.5,2", "--decay-tokens", "4"]
    argv += ["--dtype", "fp32", "--lr", "0.05"]
    assert main(argv) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["apply_to"] == "skipping"
    adapter_schedule = json.loads((out / "adapter" / "skip_schedule.json").read_text())
    assert adapter_schedule["default"]["speedup"] == 2.0
    own_schedule = json.loads((out / "skip_schedule.json").read_text())
    assert own_schedule["default"]["speedup"] == 1.0  # the base weights serve full depth
    saved = load_file(str(out / "model.safetensors"))
    base = load_hf(tiny_llama_dir).state_dict()
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, base[name], atol=0, rtol=0)
    # loaded for evaluation, the adapter is gated again: full depth is the base model
    model = load_causal_lm(str(out), torch.device("cpu"), adapter=str(out / "adapter"))
    batch = collate(EXAMPLES, pad_id=0)
    with torch.no_grad():
        full = skip_forward(model, batch, SkipConfig().resolve(NUM_LAYERS))
        skip = skip_forward(model, batch, SKIP.resolve(NUM_LAYERS))
        plain = load_causal_lm(str(tiny_llama_dir), torch.device("cpu"))  # same loader
        base_skip = skip_forward(plain, batch, SKIP.resolve(NUM_LAYERS))
        base_full = skip_forward(plain, batch, SkipConfig().resolve(NUM_LAYERS))
    torch.testing.assert_close(full, base_full, atol=0, rtol=0)
    assert (skip - base_skip).abs().max() > 1e-4  # two steps at LR 0.05 moved the adapter


def test_gating_needs_lora():
    from skipdecode.training.train import TrainConfig

    with pytest.raises(ValueError, match="lora_apply_to=skipping needs method lora"):
        TrainConfig(out_dir="x", method="full", lora_apply_to="skipping")
