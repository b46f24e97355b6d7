"""Self-distillation lowers the KL to the full-depth teacher; ``target_logits`` matches
``skip_forward``; LoRA factors exported for the engine merge like PEFT merges them.

The models are tiny random Llamas with a 128-token vocabulary, built in code (no tokenizer).
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import NUM_LAYERS, tiny_hf_model

from skipdecode import SkipConfig
from skipdecode.model_runner.adapter import load_adapter, merge_weights, save_adapter
from skipdecode.scheduler import DepthSchedule
from skipdecode.training.batch import IGNORE_INDEX, Batch, Example, collate
from skipdecode.training.checkpoint import lora_tensors
from skipdecode.training.modeling import apply_lora
from skipdecode.training.objective import skip_aware_loss
from skipdecode.training.skip_forward import skip_forward, target_logits

VOCAB = 128
HIDDEN, INTERMEDIATE, KV_WIDTH = 64, 128, 32  # tiny_models' Llama: 4 heads of 16, 2 KV heads
SKIP_2X = SkipConfig(max_depth=6, min_depth=3, decay_tokens=4).resolve(NUM_LAYERS)
PROMPTS = [[11, 20, 30, 45, 6], [7, 7, 7, 99], [64, 3, 90]]
ANSWER_TOKENS = 7


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (no contention with other work on the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_llama(seed: int = 0) -> torch.nn.Module:
    return tiny_hf_model("llama", vocab_size=VOCAB, seed=seed)


def _peaked_llama() -> torch.nn.Module:
    """A tiny Llama with a 6x final-norm gain: peaked next-token distributions, so its greedy
    answers carry most of its probability and CE toward them agrees with KL toward it (a flat
    random model's greedy tokens hold ~2 % each: CE toward them would sharpen the student away
    from the teacher)."""
    model = _tiny_llama()
    with torch.no_grad():
        model.model.norm.weight.fill_(6.0)
    return model


@torch.no_grad()
def _greedy(model: torch.nn.Module, prompt: list[int], num_tokens: int) -> list[int]:
    """The model's own full-depth greedy continuation (no KV cache: a few tiny forwards)."""
    ids = list(prompt)
    for _ in range(num_tokens):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def _teacher_batch(teacher: torch.nn.Module) -> Batch:
    """The prompts with the teacher's own answers as targets (the ``distill`` objective)."""
    return collate([Example(p, _greedy(teacher, p, ANSWER_TOKENS)) for p in PROMPTS], pad_id=0)


def _kl(student: torch.nn.Module, batch: Batch, teacher: torch.nn.Module) -> float:
    with torch.no_grad():
        _, parts = skip_aware_loss(student, batch, SKIP_2X, teacher, kl_weight=1.0)
    return parts.kl


@pytest.mark.parametrize("method", ["lora", "full"])
def test_distillation_steps_lower_the_kl_to_the_full_depth_teacher(method):
    model = _peaked_llama()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    batch = _teacher_batch(teacher)
    student = apply_lora(model, rank=8, alpha=16) if method == "lora" else model
    # The student starts as the teacher: equal at full depth, apart only where it skips.
    full = DepthSchedule.full(NUM_LAYERS)
    with torch.no_grad():
        _, same = skip_aware_loss(student, batch, full, teacher, kl_weight=1.0)
    assert same.kl < 1e-6
    kl_before = _kl(student, batch, teacher)
    assert kl_before > 0.5
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2 if method == "lora" else 2e-3)
    student.train()
    for _ in range(12):
        loss, parts = skip_aware_loss(student, batch, SKIP_2X, teacher, kl_weight=1.0)
        assert parts.loss == pytest.approx(parts.ce + parts.kl, rel=1e-5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student.eval()
    kl_after = _kl(student, batch, teacher)
    assert kl_after < 0.5 * kl_before
    # the teacher was never updated
    reference = _peaked_llama()
    assert all(
        torch.equal(a, b)
        for a, b in zip(teacher.state_dict().values(), reference.state_dict().values())
    )


def _batch() -> Batch:
    return collate(
        [
            Example([11, 20, 30, 45, 6], [17, 99, 40, 5, 8, 23, 2]),
            Example([7, 7, 7, 99], [5, 6, 7, 8, 9, 2]),
            Example([64, 3], [1, 2]),
        ],
        pad_id=0,
    )


@pytest.mark.parametrize("schedule", [SKIP_2X, DepthSchedule.full(NUM_LAYERS)], ids=["2x", "1x"])
@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "lora"])
def test_target_logits_are_the_selected_rows_of_skip_forward(schedule, wrapped):
    model = _tiny_llama()
    if wrapped:
        model = apply_lora(model, rank=4, alpha=8)
        with torch.no_grad():  # B starts at zero: give the adapters an effect
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.1)
    model.eval()
    batch = _batch()
    targets = batch.labels != IGNORE_INDEX
    checkerboard = (torch.arange(batch.input_ids.numel()) % 3 == 0).view_as(targets)
    with torch.no_grad():
        every_row = skip_forward(model, batch, schedule)  # [B, T, V]
        assert every_row.shape == (*batch.input_ids.shape, VOCAB)
        for rows in (targets, checkerboard, torch.ones_like(targets)):
            selected = target_logits(model, batch, schedule, rows)  # [N, V]
            assert selected.shape == (int(rows.sum()), VOCAB)
            torch.testing.assert_close(selected.float(), every_row[rows].float(), rtol=0, atol=1e-5)


def test_skipping_changes_only_generated_rows():
    """Prompt rows run every layer under any schedule; rows of generated tokens do not."""
    model = _tiny_llama()
    batch = _batch()
    with torch.no_grad():
        skipped = skip_forward(model, batch, SKIP_2X)
        full = skip_forward(model, batch, DepthSchedule.full(NUM_LAYERS))
        plain = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(full, plain, rtol=0, atol=1e-5)
    for row, prompt_len in enumerate(batch.prompt_lens.tolist()):
        # position prompt_len is the first generated token fed back: its D(0) = 6 < 8 layers
        torch.testing.assert_close(
            skipped[row, :prompt_len], full[row, :prompt_len], rtol=0, atol=1e-5
        )
        assert (skipped[row, prompt_len] - full[row, prompt_len]).abs().max() > 1e-3


# --- LoRA export ----------------------------------------------------------------------------------

RANK, ALPHA = 4, 8
TARGET_SHAPES = {  # (out, in) of each adapted linear in tiny_models' Llama
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV_WIDTH, HIDDEN),
    "self_attn.v_proj": (KV_WIDTH, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}


@pytest.fixture
def trained_lora():
    """(base weights, a LoRA model whose factors are random: as if trained)."""
    model = _tiny_llama()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = apply_lora(model, rank=RANK, alpha=ALPHA)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    return base, peft_model


def test_lora_tensors_use_the_engine_names_and_shapes(trained_lora):
    _, peft_model = trained_lora
    tensors = lora_tensors(peft_model)
    expected = {}
    for layer in range(NUM_LAYERS):
        for module, (out_features, in_features) in TARGET_SHAPES.items():
            prefix = f"model.layers.{layer}.{module}"
            expected[f"{prefix}.lora_A"] = (RANK, in_features)
            expected[f"{prefix}.lora_B"] = (out_features, RANK)
    assert {name: tuple(t.shape) for name, t in tensors.items()} == expected
    assert "model.layers.0.self_attn.q_proj.lora_A" in tensors
    assert all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in tensors.values())
    # the values are the PEFT factors, rounded to bf16
    peft_a = peft_model.base_model.model.model.layers[2].mlp.down_proj.lora_A["default"].weight
    torch.testing.assert_close(
        tensors["model.layers.2.mlp.down_proj.lora_A"], peft_a.detach().to(torch.bfloat16)
    )
    assert lora_tensors(_tiny_llama()) == {}  # a model without LoRA exports nothing


def test_saved_adapter_merges_like_peft_merge_and_unload(trained_lora, tmp_path):
    base, peft_model = trained_lora
    tensors = lora_tensors(peft_model)
    save_adapter(tmp_path / "adapter", tensors, RANK, ALPHA, base_model=None)
    adapter = load_adapter(tmp_path / "adapter")
    assert adapter.scale == ALPHA / RANK
    assert sorted(adapter.config["target_modules"]) == sorted(
        m.split(".")[1] for m in TARGET_SHAPES
    )
    ours = dict(merge_weights(base.items(), adapter))
    # PEFT's merge: W + (alpha / r) * B @ A in fp32, from the fp32 factors
    factors = {
        name: param.detach().clone()
        for name, param in peft_model.named_parameters()
        if "lora_" in name
    }
    peft_merged = peft_model.merge_and_unload().state_dict()
    assert ours.keys() == peft_merged.keys() == base.keys()
    num_merged = 0
    for name, weight in ours.items():
        prefix = name.removesuffix(".weight")
        a_name = f"base_model.model.{prefix}.lora_A.default.weight"
        if a_name not in factors:  # embeddings, norms: passed through untouched
            assert torch.equal(weight, base[name]), name
            continue
        num_merged += 1
        a, b = factors[a_name], factors[a_name.replace("lora_A", "lora_B")]
        # bf16 keeps 8 significant bits: each factor is off by at most 2^-8 of itself, so each
        # product term by at most ~2 * 2^-8 of |b| |a|; plus fp32 rounding of the sum.
        bound = (ALPHA / RANK) * (b.abs() @ a.abs()) * (2 * 2**-8 + 2**-16) + 1e-6
        error = (weight - peft_merged[name]).abs()
        assert bool((error <= bound).all()), f"{name}: {float((error - bound).max())}"
        # ... and the update itself is far above that rounding
        assert float((peft_merged[name] - base[name]).abs().max()) > 20 * float(bound.max())
    assert num_merged == NUM_LAYERS * len(TARGET_SHAPES)
