"""skipdecode: LLM serving with SkipDecode (batched, KV-cached token-level layer skipping)."""

from skipdecode.config import CacheConfig, EngineConfig, ModelConfig
from skipdecode.engine import Engine
from skipdecode.llm import LLM
from skipdecode.outputs import RequestOutput
from skipdecode.scheduler import SamplingParams, SchedulerConfig, SkipConfig

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "CacheConfig",
    "Engine",
    "EngineConfig",
    "ModelConfig",
    "RequestOutput",
    "SamplingParams",
    "SchedulerConfig",
    "SkipConfig",
]
