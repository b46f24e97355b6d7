"""A gated adapter (``apply_to: "skipping"``) in the engine: the base model at full depth, the
LoRA update on skipping tokens, against a slow Hugging Face reference.

The reference is the HF model of the same tiny checkpoint, teacher-forced on prompt + the
engine's tokens, with the skip semantics of ``training.skip_forward.skipping`` and the gated
LoRA applied by forward hooks written here: ``out + mask * scale * (x @ A.T @ B.T)`` where the
position's depth is below L.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from adapter_helpers import lora_tensors, write_adapter
from tiny_models import NUM_LAYERS, VOCAB, load_hf

from skipdecode import LLM, SamplingParams, SkipConfig
from skipdecode.config import ModelConfig
from skipdecode.loading import load_model
from skipdecode.model_runner import gated_adapter, loader
from skipdecode.model_runner.adapter import load_adapter, merge_weights, save_adapter
from skipdecode.model_runner.gated_adapter import GatedLoRALinear
from skipdecode.model_runner.weights import iter_weights
from skipdecode.training.skip_forward import layer_runs, position_depths, skipping

RANK, ALPHA = 4, 8.0  # scale 2
LAYERS = (0, 4, 7)  # a warm-up layer, one that skipping tokens bypass, the last
TARGETS = {
    "llama": [
        *(f"self_attn.{p}_proj" for p in "qkvo"),
        *(f"mlp.{p}_proj" for p in ("gate", "up", "down")),
    ],
    "opt": [*(f"self_attn.{p}_proj" for p in ("q", "k", "v", "out")), "fc1", "fc2"],
}
PROMPTS = [[5, 17, 300, 2048, 9, 9, 41], [11, 200, 3000, 45, 6, 12, 800, 1500, 33, 2], [7, 99]]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, logprobs=1, ignore_eos=True)
SCHEDULES = {
    "decay": SkipConfig(max_depth=7, min_depth=3, decay_tokens=6),
    "full-first": SkipConfig(max_depth=NUM_LAYERS, min_depth=4, decay_tokens=6),  # g=0 at D=L
    "warmup-2": SkipConfig(warmup_layers=2, max_depth=6, min_depth=4, decay_tokens=10),
    "preset-2x": SkipConfig.for_speedup(2.0, decay_tokens=5),
}


def lora_pairs(hf_model, kind: str, seed: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random (A, B) per adapted HF module name, large enough to change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    stack = "model.decoder.layers" if kind == "opt" else "model.layers"
    pairs = {}
    for layer in LAYERS:
        for target in TARGETS[kind]:
            name = f"{stack}.{layer}.{target}"
            linear = hf_model.get_submodule(name)
            a = torch.randn(RANK, linear.in_features, generator=generator) * 0.2
            b = torch.randn(linear.out_features, RANK, generator=generator) * 0.2
            pairs[name] = (a, b)
    return pairs


def save_pairs(directory, pairs, apply_to: str):
    tensors = {}
    for name, (a, b) in pairs.items():
        tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = a, b
    return save_adapter(directory, tensors, RANK, ALPHA, None, apply_to=apply_to)


def make_llm(model_dir, adapter=None) -> LLM:
    adapter = None if adapter is None else str(adapter)
    return LLM(str(model_dir), dtype="float32", adapter=adapter, num_kv_blocks=256, block_size=4)


class Setup:
    """One tiny model with its HF twin, LoRA pairs and engines (base, gated, merged)."""

    def __init__(self, kind: str, model_dir, tmp):
        self.kind, self.dir = kind, model_dir
        self.hf = load_hf(model_dir)
        self.pairs = lora_pairs(self.hf, kind)
        self.gated_dir = save_pairs(tmp / "gated", self.pairs, "skipping")
        self.merged_dir = save_pairs(tmp / "merged", self.pairs, "all")
        self.base = make_llm(model_dir)
        self.gated = make_llm(model_dir, self.gated_dir)


@pytest.fixture(scope="module", params=["llama", "opt"])
def setup(request, tiny_llama_dir, tiny_opt_dir, tmp_path_factory):
    model_dir = tiny_llama_dir if request.param == "llama" else tiny_opt_dir
    return Setup(request.param, model_dir, tmp_path_factory.mktemp(request.param))


def _gated_hook(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor):
    def hook(module, args, out):
        return out + mask[..., None] * (ALPHA / RANK) * (args[0] @ a.T @ b.T)

    return hook


@torch.no_grad()
def reference_logprobs(setup: Setup, prompt: list[int], generated: list[int], skip: SkipConfig):
    """[num_generated, V] log-probabilities; row g is the distribution of generated token g.

    Generated token g is fed at position len(prompt) + g (depth D(g)); the logits that pick it
    are those of the position before.
    """
    schedule = skip.resolve(NUM_LAYERS)
    tokens = prompt + generated[:-1]
    depths = position_depths(torch.tensor([len(prompt)]), len(tokens), schedule)  # [1, T]
    mask = (depths < NUM_LAYERS).float()  # [1, T]: positions whose LoRA update applies
    handles = [
        setup.hf.get_submodule(name).register_forward_hook(_gated_hook(a, b, mask))
        for name, (a, b) in setup.pairs.items()
    ]
    try:
        with skipping(setup.hf, layer_runs(depths, schedule)):
            logits = setup.hf(input_ids=torch.tensor([tokens]), use_cache=False).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    return torch.log_softmax(logits[len(prompt) - 1 :].float(), dim=-1)


def assert_matches_reference(setup: Setup, prompt, out, skip: SkipConfig) -> None:
    schedule = skip.resolve(NUM_LAYERS)
    assert out.depths == [schedule.depth(g) for g in range(len(out.token_ids))]
    expected = reference_logprobs(setup, prompt, out.token_ids, skip)
    assert out.token_ids == expected.argmax(dim=-1).tolist()
    got = torch.tensor([lp.logprob for lp in out.logprobs])
    want = expected[torch.arange(len(out.token_ids)), out.token_ids]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def logprobs_of(outs) -> list[list[float]]:
    return [[lp.logprob for lp in out.logprobs] for out in outs]


def test_at_full_depth_a_gated_adapter_is_the_base_model(setup):
    base = setup.base.generate(PROMPTS, GREEDY)
    gated = setup.gated.generate(PROMPTS, GREEDY)
    assert all(out.depths == [NUM_LAYERS] * 12 for out in gated)
    assert [o.token_ids for o in gated] == [o.token_ids for o in base]
    assert logprobs_of(gated) == logprobs_of(base)  # bit for bit
    # The same tensors merged ("all") change full depth: the check above can fail.
    merged = make_llm(setup.dir, setup.merged_dir).generate(PROMPTS, GREEDY)
    difference = torch.tensor(logprobs_of(merged)) - torch.tensor(logprobs_of(base))
    assert difference.abs().max() > 1e-2


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_skipping_tokens_match_the_reference(setup, name):
    skip = SCHEDULES[name]
    outs = setup.gated.generate(PROMPTS, GREEDY, skip=skip)
    for prompt, out in zip(PROMPTS, outs):
        assert_matches_reference(setup, prompt, out, skip)
    # The adapter changes skipping tokens (else the reference would not tell it was applied).
    plain = setup.base.generate(PROMPTS, GREEDY, skip=skip)
    difference = torch.tensor(logprobs_of(outs)) - torch.tensor(logprobs_of(plain))
    assert difference.abs().max() > 1e-2


def test_one_step_mixing_full_depth_and_skipping_requests(setup, monkeypatch):
    # Different warm-up counts in one step: some layers run a non-prefix set of rows
    # (plan.rows), and full-depth rows with w=2 sort after skipping rows with w=0 or 1.
    skips = [
        SCHEDULES["decay"],
        SkipConfig(warmup_layers=0, max_depth=7, min_depth=5, decay_tokens=4),
        SkipConfig(warmup_layers=2),
        SkipConfig(),
        SCHEDULES["warmup-2"],
    ]
    prompts = [*PROMPTS, [3, 1000, 42], [8, 8, 9000, 5]]
    kinds = set()
    set_step = gated_adapter.AdapterGate.set_step

    def spy(gate, *args):
        set_step(gate, *args)
        kinds.update(type(rows).__name__ for rows in gate.layer_rows or [])

    monkeypatch.setattr(gated_adapter.AdapterGate, "set_step", spy)
    outs = setup.gated.generate(prompts, GREEDY, skip=skips)
    assert {"int", "Tensor"} <= kinds  # both the slice and the index path ran
    base = setup.base.generate(prompts, GREEDY, skip=skips)
    for prompt, skip, out, ref in zip(prompts, skips, outs, base):
        if skip.max_depth is None:  # 1x: exactly the base model
            assert out.token_ids == ref.token_ids
            assert [lp.logprob for lp in out.logprobs] == [lp.logprob for lp in ref.logprobs]
        else:
            assert_matches_reference(setup, prompt, out, skip)


def test_fused_projections_match_the_reference(setup, monkeypatch):
    """The CPU fused path (qkv_proj, gate_up_proj) in fp32: packing needs native bf16, so only
    the fusing is forced here."""
    if setup.kind != "llama":
        pytest.skip("OPT has no fused projections")
    monkeypatch.setattr(loader, "can_pack", lambda model: True)
    monkeypatch.setattr(loader, "pack_linears", lambda model: 0)
    llm = make_llm(setup.dir, setup.gated_dir)
    layers = llm.engine.runner.model.model.layers
    for index in LAYERS:
        assert isinstance(layers[index].self_attn.qkv_proj, GatedLoRALinear)
        assert isinstance(layers[index].mlp.gate_up_proj, GatedLoRALinear)
    assert not isinstance(layers[1].self_attn.qkv_proj, GatedLoRALinear)
    skip = SCHEDULES["decay"]
    for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, GREEDY, skip=skip)):
        assert_matches_reference(setup, prompt, out, skip)
    full_depth = torch.tensor(logprobs_of(llm.generate(PROMPTS, GREEDY)))
    base = torch.tensor(logprobs_of(setup.base.generate(PROMPTS, GREEDY)))
    torch.testing.assert_close(full_depth, base, atol=1e-5, rtol=0)  # fused: another rounding


def test_fused_wrapper_equals_the_unfused_parts(setup, monkeypatch):
    if setup.kind != "llama":
        pytest.skip("OPT has no fused projections")
    unfused = make_llm(setup.dir, setup.gated_dir).engine.runner.model
    monkeypatch.setattr(loader, "can_pack", lambda model: True)
    monkeypatch.setattr(loader, "pack_linears", lambda model: 0)
    fused = make_llm(setup.dir, setup.gated_dir).engine.runner.model
    x = torch.randn(6, 64)
    for rows in (0, 4, torch.tensor([1, 3, 4])):
        for model in (unfused, fused):
            model.adapter_gate.layer_rows = [rows] * NUM_LAYERS
        with torch.no_grad():
            for index in LAYERS:
                attn, mlp = unfused.model.layers[index].self_attn, unfused.model.layers[index].mlp
                fused_layer = fused.model.layers[index]
                qkv = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
                torch.testing.assert_close(fused_layer.self_attn.qkv_proj(x), qkv)
                gate_up = torch.cat([mlp.gate_proj(x), mlp.up_proj(x)], dim=-1)
                torch.testing.assert_close(fused_layer.mlp.gate_up_proj(x), gate_up)
                # Rows outside the gate are the base linear's, exactly.
                plain = fused_layer.self_attn.qkv_proj.base(x)
                ungated = torch.ones(6, dtype=torch.bool)
                ungated[torch.arange(6)[rows:] if isinstance(rows, int) else rows] = False
                assert torch.equal(fused_layer.self_attn.qkv_proj(x)[ungated], plain[ungated])


# ---- bad input ----------------------------------------------------------------------------


def test_unknown_apply_to_names_the_file_and_the_key(tmp_path):
    directory = write_adapter(tmp_path / "a", lora_tensors(), apply_to="sometimes")
    file = directory / "adapter_config.json"
    problem = "'apply_to' must be one of ['all', 'skipping'] (got 'sometimes')"
    with pytest.raises(ValueError, match=re.escape(f"invalid adapter file {file}: {problem}")):
        load_adapter(directory)
    with pytest.raises(ValueError, match="save_adapter: apply_to must be one of"):
        save_adapter(tmp_path / "b", {}, RANK, ALPHA, None, apply_to="sometimes")


def test_a_gated_adapter_with_replacements_is_refused(tmp_path):
    directory = write_adapter(tmp_path / "a", lora_tensors(), apply_to="skipping")
    problem = "model.norm.weight is a full replacement tensor"
    file = directory / "adapter.safetensors"
    expected = re.escape(f"invalid adapter file {file}: ") + ".*" + re.escape(problem)
    with pytest.raises(ValueError, match=expected):
        load_adapter(directory)
    with pytest.raises(ValueError, match=re.escape(problem)):
        save_adapter(tmp_path / "b", lora_tensors(), RANK, ALPHA, None, apply_to="skipping")
    assert not (tmp_path / "b").exists()  # refused before anything is written
    assert load_adapter(write_adapter(tmp_path / "c", lora_tensors())).apply_to == "all"


def test_apply_to_round_trip_and_what_a_gated_adapter_may_target(tiny_llama_dir, tmp_path):
    pairs = {n: t for n, t in lora_tensors().items() if n.endswith(("lora_A", "lora_B"))}
    gated = save_adapter(tmp_path / "g", pairs, RANK, ALPHA, None, apply_to="skipping")
    assert json.loads((gated / "adapter_config.json").read_text())["apply_to"] == "skipping"
    assert load_adapter(gated).apply_to == "skipping"
    merged = save_adapter(tmp_path / "m", pairs, RANK, ALPHA, None)  # "all": the key is omitted
    assert "apply_to" not in json.loads((merged / "adapter_config.json").read_text())
    assert load_adapter(merged).apply_to == "all"
    with pytest.raises(ValueError, match="cannot be merged"):
        list(merge_weights(iter_weights(str(tiny_llama_dir)), load_adapter(gated)))

    def load(name: str, a: torch.Tensor, b: torch.Tensor):
        tensors = {f"{name}.lora_A": a, f"{name}.lora_B": b}
        adapter = write_adapter(tmp_path / name, tensors, apply_to="skipping")
        config = ModelConfig(model=str(tiny_llama_dir), adapter=str(adapter), dtype="float32")
        return load_model(config)

    with pytest.raises(ValueError, match="lm_head is not a linear inside a decoder layer"):
        load("lm_head", torch.zeros(RANK, 64), torch.zeros(VOCAB, RANK))
    q_proj = "model.layers.2.self_attn.q_proj"
    with pytest.raises(ValueError, match=re.escape(f"{q_proj} is 64 -> 64, but its LoRA pair")):
        load(q_proj, torch.zeros(RANK, 65), torch.zeros(64, RANK))
