"""Requests, sampling and skip parameters, the depth schedule and continuous batching."""

from skipdecode.scheduler.sampling_params import SamplingParams
from skipdecode.scheduler.skip import DepthSchedule, SkipConfig

__all__ = ["DepthSchedule", "SamplingParams", "SkipConfig"]
