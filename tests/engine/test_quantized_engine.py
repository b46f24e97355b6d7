"""The engine on int8/int4 weights against the slow skip reference run on the same quantized
weights, preemption, and a gated adapter on a quantized base (tiny models, fp32).

The reference is the Hugging Face model of the same checkpoint with every linear, the LM head
too (untied from the embedding, which stays float), replaced by the dequantized values of its
quantization: what the engine's kernels multiply with.
"""

from __future__ import annotations

import random

import pytest
import torch
from adapter_helpers import lora_tensors, write_adapter
from reference import depths_of, reference_generate, reference_logits
from tiny_models import NUM_LAYERS, load_hf
from torch import nn

from skipdecode import LLM, SamplingParams, SkipConfig
from skipdecode.config import ModelConfig
from skipdecode.loading import resolve_quantization
from skipdecode.model_runner.adapter import load_adapter
from skipdecode.model_runner.gated_adapter import GatedLoRALinear
from skipdecode.model_runner.quant import DEFAULT_GROUP_SIZE, quantize_weight
from skipdecode.model_runner.quant_linear import Int4Linear, Int8Linear
from skipdecode.model_runner.weights import default_model_path
from skipdecode.scheduler import DepthSchedule

SKIPS = {"1x": SkipConfig(), "2x": SkipConfig.for_speedup(2.0, decay_tokens=8)}
PROMPTS = [[11, 200, 3000, 45, 6], [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 99]]
NUM_TOKENS = 14
GREEDY = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=0)
MODULES = {"int8": Int8Linear, "int4": Int4Linear}


def quantized_twin(directory, mode: str):
    """The checkpoint's HF model with every linear holding its dequantized quantization."""
    hf = load_hf(directory)
    with torch.no_grad():
        for path, module in hf.named_modules():
            if isinstance(module, nn.Linear):  # lm_head: a new parameter unties it
                # The head keeps 8 bits under int4.
                kind = "int8" if mode == "int4" and path == "lm_head" else mode
                qweight = quantize_weight(module.weight, kind, DEFAULT_GROUP_SIZE, torch.float32)
                module.weight = nn.Parameter(qweight.dequantize(), requires_grad=False)
    return hf


def make_llm(directory, mode: str, **kwargs) -> LLM:
    kwargs = {"num_kv_blocks": 512, "block_size": 4, **kwargs}
    return LLM(str(directory), dtype="float32", quantization=mode, **kwargs)


def reference_logprobs(hf, prompt, generated, schedule: DepthSchedule, before_layer=None):
    """[num_generated]: the logprob of each generated token, recomputed from scratch."""
    tokens = prompt + generated[:-1]
    depths = depths_of(len(prompt), len(tokens), schedule)
    logits = reference_logits(hf, tokens, depths, schedule.warmup_layers, before_layer)
    logprobs = torch.log_softmax(logits[len(prompt) - 1 :].float(), dim=-1)
    return logprobs[torch.arange(len(generated)), generated]


@pytest.fixture(scope="module", params=["llama-int8", "llama-int4", "opt-int8", "opt-int4"])
def case(request, tiny_llama_dir, tiny_opt_dir):
    kind, mode = request.param.split("-")
    directory = tiny_llama_dir if kind == "llama" else tiny_opt_dir
    return mode, directory, make_llm(directory, mode), quantized_twin(directory, mode)


@pytest.mark.parametrize("skip_name", list(SKIPS))
def test_engine_matches_the_reference_on_the_same_quantized_weights(case, skip_name):
    mode, directory, llm, twin = case
    model = llm.engine.runner.model
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [] and isinstance(model.lm_head, Int8Linear)  # 8 bits under int4 too
    assert any(isinstance(m, MODULES[mode]) for n, m in model.named_modules() if n != "lm_head")
    assert llm.quantization == mode
    skip = SKIPS[skip_name]
    schedule = skip.resolve(NUM_LAYERS)
    float_hf = load_hf(directory)
    for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, GREEDY, skip=skip)):
        assert out.depths == [schedule.depth(g) for g in range(NUM_TOKENS)]
        assert out.token_ids == reference_generate(twin, prompt, schedule, NUM_TOKENS)
        got = torch.tensor([lp.logprob for lp in out.logprobs])
        want = reference_logprobs(twin, prompt, out.token_ids, schedule)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        # The float weights give other logprobs: the match above needs the quantized ones.
        assert (
            reference_logprobs(float_hf, prompt, out.token_ids, schedule) - got
        ).abs().max() > 1e-3


def _requests(count: int, seed: int):
    rng = random.Random(seed)
    schedules = [None, SKIPS["2x"], SkipConfig(max_depth=7, min_depth=3, decay_tokens=6)]
    prompts = [[rng.randrange(49152) for _ in range(rng.randint(1, 40))] for _ in range(count)]
    skips = [schedules[i % len(schedules)] for i in range(count)]
    params = [
        SamplingParams(temperature=0, max_tokens=rng.randint(4, 24), ignore_eos=True)
        for _ in range(count)
    ]
    return prompts, skips, params


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_preemption_reproduces_outputs_under_int8(kind, tiny_llama_dir, tiny_opt_dir):
    directory = tiny_llama_dir if kind == "llama" else tiny_opt_dir
    prompts, skips, params = _requests(12, seed=2)
    solo = make_llm(directory, "int8")
    alone = [solo.generate([p], s, skip=k)[0].token_ids for p, s, k in zip(prompts, params, skips)]
    # 140 blocks of 4 positions: the longest request fits alone, a few fit together.
    small = make_llm(directory, "int8", num_kv_blocks=140)
    outs = small.generate(prompts, params, skip=skips)
    assert small.engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in outs] == alone
    assert small.engine.kv_cache.num_free_blocks == 140


def test_a_gated_adapter_runs_float_lora_on_a_quantized_base(tiny_llama_dir, tmp_path):
    pairs = {n: t for n, t in lora_tensors().items() if n.endswith(("lora_A", "lora_B"))}
    adapter_dir = write_adapter(tmp_path / "gated", pairs, apply_to="skipping")
    gated = make_llm(tiny_llama_dir, "int8", adapter=str(adapter_dir))
    base = make_llm(tiny_llama_dir, "int8")
    attention = gated.engine.runner.model.model.layers[0].self_attn
    assert isinstance(attention.qkv_proj, GatedLoRALinear)  # fused, then wrapped
    assert isinstance(attention.qkv_proj.base, Int8Linear)
    assert attention.qkv_proj.lora_a.dtype == torch.float32
    # Full depth: the quantized base model, bit for bit.
    full = [
        (o.token_ids, [lp.logprob for lp in o.logprobs]) for o in gated.generate(PROMPTS, GREEDY)
    ]
    assert full == [
        (o.token_ids, [lp.logprob for lp in o.logprobs]) for o in base.generate(PROMPTS, GREEDY)
    ]
    # Skipping: the reference on the quantized weights, plus the LoRA update on skipping rows.
    skip = SkipConfig(max_depth=7, min_depth=3, decay_tokens=6)
    schedule = skip.resolve(NUM_LAYERS)
    twin = quantized_twin(tiny_llama_dir, "int8")
    adapter = load_adapter(adapter_dir)
    outs = gated.generate(PROMPTS, GREEDY, skip=skip)
    for prompt, out in zip(PROMPTS, outs):
        got = torch.tensor([lp.logprob for lp in out.logprobs])
        want = gated_reference_logprobs(twin, adapter, prompt, out.token_ids, schedule)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    plain = base.generate(PROMPTS, GREEDY, skip=skip)  # the update is there to be seen
    difference = [
        a.logprob - b.logprob for o, p in zip(outs, plain) for a, b in zip(o.logprobs, p.logprobs)
    ]
    assert max(map(abs, difference)) > 1e-2


def gated_reference_logprobs(hf, adapter, prompt, generated, schedule: DepthSchedule):
    """reference_logprobs with ``out + scale * (x A^T) B^T`` added by hooks to each adapted
    linear, on the rows of each layer call whose depth is below L."""
    depths = torch.tensor(depths_of(len(prompt), len(prompt) + len(generated) - 1, schedule))
    gate = {}

    def before_layer(index, positions):
        gate["mask"] = (depths[positions] < NUM_LAYERS).float()[None, :, None]  # [1, n, 1]

    def hook(a, b):
        return lambda module, args, y: y + gate["mask"] * adapter.scale * (args[0] @ a.T @ b.T)

    handles = [
        hf.get_submodule(name.removesuffix(".weight")).register_forward_hook(hook(a, b))
        for name, (a, b) in adapter.lora.items()
    ]
    try:
        return reference_logprobs(hf, prompt, generated, schedule, before_layer)
    finally:
        for handle in handles:
            handle.remove()


def test_auto_serves_gguf_blocks_only_where_the_kernels_are_fast(tiny_llama_dir, tmp_path):
    gguf_file = default_model_path()
    assert resolve_quantization(ModelConfig(dtype="bfloat16"), gguf_file, None) == "gguf"
    assert resolve_quantization(ModelConfig(dtype="float32"), gguf_file, None) == "none"
    on_cuda = ModelConfig(dtype="bfloat16", device="cuda")
    assert resolve_quantization(on_cuda, gguf_file, None) == "none"
    dummy = ModelConfig(dtype="bfloat16", load_format="dummy")
    assert resolve_quantization(dummy, gguf_file, None) == "none"
    merged_dir = write_adapter(tmp_path / "merged", lora_tensors())
    merged = load_adapter(merged_dir)
    assert resolve_quantization(ModelConfig(dtype="bfloat16"), gguf_file, merged) == "none"
    safetensors = ModelConfig(model=str(tiny_llama_dir), dtype="bfloat16")
    assert resolve_quantization(safetensors, str(tiny_llama_dir), None) == "none"
    explicit = ModelConfig(dtype="float32", quantization="int4")
    assert resolve_quantization(explicit, str(tiny_llama_dir), None) == "int4"
    assert make_llm(tiny_llama_dir, "auto", num_kv_blocks=16).quantization == "none"
