"""skipdecode: LLM serving with SkipDecode (batched, KV-cached token-level layer skipping).

Names are imported lazily, so ``skipdecode.scheduler`` and ``skipdecode.kv_cache`` stay free
of torch when used alone.
"""

from __future__ import annotations

import importlib

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
