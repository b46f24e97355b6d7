"""Training steps reduce the loss (full and LoRA), self-distillation, deterministic resume."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import NUM_LAYERS, load_hf

from skipdecode import SkipConfig
from skipdecode.training import loop as loop_module
from skipdecode.training.batch import Example, collate
from skipdecode.training.modeling import apply_lora
from skipdecode.training.objective import skip_aware_loss
from skipdecode.training.train import TrainConfig, train

SKIP_2X = SkipConfig(max_depth=6, min_depth=3, decay_tokens=4).resolve(NUM_LAYERS)
FULL = SkipConfig().resolve(NUM_LAYERS)
BATCH = collate(
    [
        Example([11, 200, 3000, 45, 6], [17, 99, 400, 5, 8, 23, 2]),
        Example([7, 7, 7, 99], [5, 6, 7, 8, 9, 2]),
    ],
    pad_id=2,
)


def _fit(model, lr: float, num_steps: int) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(num_steps):
        loss, parts = skip_aware_loss(model, BATCH, SKIP_2X)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(parts.loss)
    return losses


def test_full_fine_tuning_reduces_the_skip_loss(tiny_llama_dir):
    losses = _fit(load_hf(tiny_llama_dir).train(), lr=3e-3, num_steps=6)
    assert losses[-1] < 0.7 * losses[0]


def test_lora_reduces_the_loss_and_trains_only_adapters(tiny_llama_dir):
    model = apply_lora(load_hf(tiny_llama_dir), rank=8, alpha=16)
    frozen_before = model.get_base_model().model.layers[3].mlp.up_proj.base_layer.weight.clone()
    losses = _fit(model.train(), lr=1e-2, num_steps=6)
    assert losses[-1] < 0.7 * losses[0]
    frozen_after = model.get_base_model().model.layers[3].mlp.up_proj.base_layer.weight
    assert torch.equal(frozen_before, frozen_after)


def test_kl_is_zero_against_itself_at_full_depth_only(tiny_llama_dir):
    model = load_hf(tiny_llama_dir)
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        _, same = skip_aware_loss(model, BATCH, FULL, teacher, kl_weight=1.0)
        _, skipped = skip_aware_loss(model, BATCH, SKIP_2X, teacher, kl_weight=1.0)
    assert same.kl < 1e-5 and same.loss == pytest.approx(same.ce, abs=1e-5)
    assert skipped.kl > 0.1
    assert skipped.loss == pytest.approx(skipped.ce + skipped.kl, rel=1e-5)


def _config(model_dir, csv, out, **overrides) -> TrainConfig:
    settings = dict(
        out_dir=str(out),
        model=str(model_dir),
        data=str(csv),
        val_percent=0,
        speedups=(1.0, 2.0),
        batch_size=2,
        epochs=2.0,  # 3 steps per epoch: the run crosses an epoch boundary
        max_steps=4,
        lr=1e-3,
        lr_warmup_steps=1,
        save_every=2,
        dtype="fp32",
        kl_weight=0.5,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_resume_continues_exactly(tiny_llama_dir, e2e_csv, tmp_path, monkeypatch):
    straight = train(_config(tiny_llama_dir, e2e_csv, tmp_path / "a"), show_progress=False)
    # The second run dies in step 3, after the state of step 2 was saved.
    real_step = loop_module.TrainLoop.step

    def dying_step(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(loop_module.TrainLoop, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_llama_dir, e2e_csv, tmp_path / "b"), show_progress=False)
    monkeypatch.setattr(loop_module.TrainLoop, "step", real_step)
    with pytest.raises(ValueError, match="pass --resume"):
        train(_config(tiny_llama_dir, e2e_csv, tmp_path / "b"), show_progress=False)
    with pytest.raises(ValueError, match="settings changed"):
        train(_config(tiny_llama_dir, e2e_csv, tmp_path / "b", resume=True, lr=2e-3))
    resumed = train(_config(tiny_llama_dir, e2e_csv, tmp_path / "b", resume=True))
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], abs=1e-6)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    log = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 4  # the redone step is logged once


def test_each_epoch_visits_every_example_once_in_length_sorted_batches():
    lengths = [(i * 37) % 101 for i in range(203)]
    steps_per_epoch = 13  # ceil(203 / 16)
    for epoch in range(2):
        batches = [
            loop_module.batch_indices(epoch * steps_per_epoch + i, lengths, 16, seed=5)
            for i in range(steps_per_epoch)
        ]
        assert sorted(i for b in batches for i in b) == list(range(203))
        spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
        assert spread / steps_per_epoch < 20  # random batches would spread ~90
    first = loop_module.batch_indices(0, lengths, 16, seed=5)
    assert first != loop_module.batch_indices(steps_per_epoch, lengths, 16, seed=5)
    assert first == loop_module.batch_indices(0, lengths, 16, seed=5)


def test_a_shaped_preset_family_trains_and_is_recorded(tiny_llama_dir, e2e_csv, tmp_path):
    from skipdecode.checkpoint_schedule import load_schedule_record
    from skipdecode.scheduler import PresetFamily, SkipConfig

    shape = dict(decay_tokens=4, warmup_layers=1, depth_ratio=3.0, horizon_tokens=8)
    out = tmp_path / "front"
    train(_config(tiny_llama_dir, e2e_csv, out, speedups=(2.0,), max_steps=1, **shape))
    record = load_schedule_record(out / "skip_schedule.json")
    family = PresetFamily(1, 4, 3.0, 8)
    assert record["preset_family"] == family
    # The run trained the schedule this family resolves 2x to (6 -> 3 on 8 layers), not the
    # generic shape's (4 -> 4).
    resolved = record["trained_for"][0]["resolved"]
    assert (resolved["max_depth"], resolved["min_depth"]) == (6, 3)
    assert SkipConfig.for_speedup(2.0, 4, 1).resolve(8).max_depth == 4
    # A resumed run must keep the shape; runs saved before it existed keep the generic one.
    shaped = _config(tiny_llama_dir, e2e_csv, out, **shape).fingerprint()
    assert (shaped["depth_ratio"], shaped["horizon_tokens"]) == (3.0, 8)
    assert "depth_ratio" not in _config(tiny_llama_dir, e2e_csv, out).fingerprint()
    with pytest.raises(ValueError, match="PresetFamily.horizon_tokens"):
        _config(tiny_llama_dir, e2e_csv, tmp_path / "bad", horizon_tokens=0)
