"""Messages between the API server process and the engine-core process (msgpack via msgspec).

The API process sends ``AddRequest`` / ``AbortRequests`` / ``Shutdown``; the core answers with one
``CoreOutputs`` per step (every request's new tokens of that step together) and one after it
applies a batch of inputs, never one message per token per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from skipdecode.scheduler import PresetFamily, SamplingParams, SchedulerConfig, SkipConfig
from skipdecode.scheduler.request import TokenLogprobs
from skipdecode.stats import StepStats


class AddRequest(msgspec.Struct, tag="add", array_like=True):
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    skip: SkipConfig | None


class AbortRequests(msgspec.Struct, tag="abort", array_like=True):
    request_ids: list[str]


class Shutdown(msgspec.Struct, tag="shutdown", array_like=True):
    pass


CoreInput = AddRequest | AbortRequests | Shutdown


class TokenDelta(msgspec.Struct, array_like=True, omit_defaults=True):
    """What one step added to one request."""

    request_id: str
    new_token_ids: list[int]
    depths: list[int]  # the depth of each new token (DESIGN.md §2)
    logprobs: list[TokenLogprobs] | None = None  # when the request asked for them
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # with the first token only
    finish_reason: str | None = None  # "stop" (EOS or a stop token id), "length", "abort"
    stop_reason: int | str | None = None
    queue_seconds: float | None = None  # arrival in the core -> first scheduled (on finish)


class Failure(msgspec.Struct, array_like=True):
    """Requests ended by an error: a failed step, or a request the core refused."""

    request_ids: list[str]
    message: str
    kind: str = "step"  # "step" (HTTP 500) or "invalid" (HTTP 400)


class Occupancy(msgspec.Struct, array_like=True):
    num_running: int
    num_waiting: int
    kv_used_blocks: int
    kv_total_blocks: int


class CoreOutputs(msgspec.Struct, array_like=True, omit_defaults=True):
    occupancy: Occupancy
    deltas: list[TokenDelta] = []
    failures: list[Failure] = []
    step: StepStats | None = None
    dead: str | None = None  # the core loop died: why (the process exits next)


@dataclass
class EngineInfo:
    """What the API process needs to know of the loaded engine (sent once, at start)."""

    tokenizer: object | None
    vocab_size: int  # the config's: token ids must lie below it
    logits_size: int  # the model's output width (grammar masks)
    num_layers: int
    max_model_len: int
    default_skip: SkipConfig | None
    preset_family: PresetFamily
    scheduler_config: SchedulerConfig
    kv_geometry: tuple[int, int]  # (num_blocks, block_size)
    eos_token_ids: frozenset[int]
    pid: int


def encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder()


def input_decoder() -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(CoreInput)


def output_decoder() -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(CoreOutputs)
