"""One registry from Hugging Face architecture name to our model class."""

from __future__ import annotations

from torch import nn

from skipdecode.model_runner.models.llama import LlamaForCausalLM
from skipdecode.model_runner.models.opt import OPTForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "OPTForCausalLM": OPTForCausalLM,
}
# GGUF-derived configs may carry no `architectures`; fall back on model_type.
_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "opt": "OPTForCausalLM",
}


def model_class_for(config) -> type[nn.Module]:
    """The class that implements ``config``'s architecture, or a ValueError naming it."""
    names = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", None)
    if model_type in _BY_MODEL_TYPE:
        names.append(_BY_MODEL_TYPE[model_type])
    for name in names:
        if name in MODEL_REGISTRY:
            return MODEL_REGISTRY[name]
    raise ValueError(
        f"unsupported model architecture {names or model_type!r};"
        f" supported: {', '.join(sorted(MODEL_REGISTRY))}"
    )


def kv_head_shape(config) -> tuple[int, int]:
    """(num_kv_heads, head_dim) of one layer's keys, from the HF config."""
    num_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    return getattr(config, "num_key_value_heads", None) or num_heads, head_dim
