"""Requests, sampling and skip parameters, the depth schedule and continuous batching."""

from skipdecode.scheduler.outputs import RunnerOutput, ScheduledSequence, SchedulerOutput
from skipdecode.scheduler.request import Request, RequestStatus, TokenLogprobs
from skipdecode.scheduler.sampling_params import SamplingParams, StructuredOutput
from skipdecode.scheduler.scheduler import Scheduler, SchedulerConfig
from skipdecode.scheduler.skip import DepthSchedule, PresetFamily, SkipConfig

__all__ = [
    "DepthSchedule",
    "Request",
    "RequestStatus",
    "RunnerOutput",
    "SamplingParams",
    "ScheduledSequence",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "PresetFamily",
    "SkipConfig",
    "StructuredOutput",
    "TokenLogprobs",
]
