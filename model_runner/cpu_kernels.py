"""The CPU kernels (csrc/), compiled on first use: decode attention and fused layer ops.

- ``decode_attention``: single-query attention that reads each key and value once, in place in
  the KV pool, instead of gathering the sequence's blocks into a copy and running small batched
  matmuls over it.
- ``rms_norm``, ``add_rms_norm``, ``silu_and_mul``, ``rotary_store``: one pass each where the
  PyTorch path runs several small ops (model_runner/ops.py picks between the two).

On the 2-core development machine these are most of a decode step's non-matmul time. The sources
are built with ``torch.utils.cpp_extension`` (needs a C++ compiler and ninja) into torch's
extension cache the first time a CPU engine asks for them; when that is impossible the engine
logs why once and keeps the pure-PyTorch path. ``SKIPDECODE_CPU_KERNELS=0`` turns them off.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)
SOURCE_DIR = Path(__file__).parent / "csrc"
SOURCES = ("bindings.cpp", "decode_attention.cpp", "fused_ops.cpp")
ENV_SWITCH = "SKIPDECODE_CPU_KERNELS"
DTYPES = (torch.float32, torch.bfloat16)


def kernels_enabled() -> bool:
    """False when the environment switches the kernels off."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.cache
def load_kernels() -> ModuleType | None:
    """The compiled extension module, or None (with one warning) when it cannot be built."""
    logger.info("loading the CPU kernels (the first build takes about a minute)")
    try:
        from torch.utils.cpp_extension import load

        return load(
            name="skipdecode_cpu_kernels",
            sources=[str(SOURCE_DIR / name) for name in SOURCES],
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, an unsupported platform, ...
        logger.warning("CPU kernels unavailable, using PyTorch ops: %s", exc)
        return None


def cpu_kernels(device: torch.device, dtype: torch.dtype) -> ModuleType | None:
    """The kernel module for a model on this device and dtype, or None (PyTorch ops)."""
    if device.type != "cpu" or dtype not in DTYPES or not kernels_enabled():
        return None
    return load_kernels()
