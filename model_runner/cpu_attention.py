"""The CPU decode-attention kernel (csrc/decode_attention.cpp), compiled on first use.

Single-query (decode) attention reads each key and value once, in place in the KV pool, instead
of gathering the sequence's blocks into a copy and running small batched matmuls over it; on the
2-core development machine that is most of a decode step's attention time. The source is built
with ``torch.utils.cpp_extension`` (needs a C++ compiler and ninja) into torch's extension cache
the first time a CPU engine asks for it; when that is impossible the engine logs why once and
keeps the pure-PyTorch path. ``SKIPDECODE_CPU_ATTENTION_KERNEL=0`` turns the kernel off.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
SOURCE = Path(__file__).parent / "csrc" / "decode_attention.cpp"
ENV_SWITCH = "SKIPDECODE_CPU_ATTENTION_KERNEL"
DTYPES = (torch.float32, torch.bfloat16)


def kernel_enabled() -> bool:
    """False when the environment switches the kernel off."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.cache
def load_kernel():
    """The compiled extension module, or None (with one warning) when it cannot be built."""
    logger.info("loading the CPU decode-attention kernel (the first build takes about a minute)")
    try:
        from torch.utils.cpp_extension import load

        return load(
            name="skipdecode_decode_attention",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, an unsupported platform, ...
        logger.warning("CPU decode-attention kernel unavailable, using PyTorch ops: %s", exc)
        return None


def decode_attention_kernel(device: torch.device, dtype: torch.dtype):
    """The kernel's ``decode_attention`` function for this device and dtype, or None."""
    if device.type != "cpu" or dtype not in DTYPES or not kernel_enabled():
        return None
    module = load_kernel()
    return None if module is None else module.decode_attention
