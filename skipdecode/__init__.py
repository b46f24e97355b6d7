"""skipdecode: LLM serving with SkipDecode (batched, KV-cached token-level layer skipping).

Names are imported lazily, so ``skipdecode.scheduler`` and ``skipdecode.kv_cache`` stay free
of torch when used alone.
"""

from __future__ import annotations

import importlib
import os

# Idle OpenMP workers sleep instead of spinning. On a few cores shared with the HTTP event loop
# (or anything else), spinning workers made decode steps up to 8x slower in our measurements.
# It must be set before torch loads; a user's explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    "LLM": "skipdecode.llm",
    "CacheConfig": "skipdecode.config",
    "EngineConfig": "skipdecode.config",
    "ModelConfig": "skipdecode.config",
    "Engine": "skipdecode.engine",
    "RequestOutput": "skipdecode.outputs",
    "SamplingParams": "skipdecode.scheduler",
    "SchedulerConfig": "skipdecode.scheduler",
    "SkipConfig": "skipdecode.scheduler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'skipdecode' has no attribute {name!r}")
