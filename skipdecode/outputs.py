"""What the engine returns for each request, after every step and at the end."""

from __future__ import annotations

from dataclasses import dataclass

from skipdecode.scheduler import Request, TokenLogprobs


@dataclass
class RequestOutput:
    """A snapshot of one request: cumulative text and ids, per-token depths, counters.

    ``new_token_ids`` are the ids added by the step that produced this snapshot (streaming).
    ``text`` never ends in a possible partial stop string while the request runs, so a client
    that streams ``text`` deltas sees exactly the final text.
    """

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    new_token_ids: list[int]
    text: str
    depths: list[int]  # layers each generated token runs (DESIGN.md §2)
    num_layers: int
    finished: bool
    finish_reason: str | None  # "stop", "length", "abort" or None while running
    stop_reason: int | str | None  # the stop token id or stop string that ended the request
    logprobs: list[TokenLogprobs] | None
    theoretical_speedup: float  # L * N / sum(depths)
    # Per prompt position when asked (SamplingParams.prompt_logprobs), else None: the logprob of
    # the prompt token given the tokens before it; position 0 has none (None).
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_generated_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_layers_computed(self) -> int:
        return sum(self.depths)

    @property
    def num_layers_skipped(self) -> int:
        return self.num_layers * len(self.depths) - self.num_layers_computed


def snapshot(request: Request, text: str, new_token_ids: list[int]) -> RequestOutput:
    """Copy what a client may see of ``request`` now."""
    params = request.sampling_params
    return RequestOutput(
        request_id=request.request_id,
        prompt_token_ids=request.prompt_token_ids,
        token_ids=list(request.output_token_ids),
        new_token_ids=new_token_ids,
        text=text,
        depths=request.output_depths,
        num_layers=request.schedule.num_layers,
        finished=request.status.is_finished,
        finish_reason=request.finish_reason,
        stop_reason=request.stop_reason,
        logprobs=list(request.output_logprobs) if params.logprobs is not None else None,
        theoretical_speedup=request.theoretical_speedup,
        prompt_logprobs=(
            list(request.prompt_logprobs) if params.prompt_logprobs is not None else None
        ),
    )
