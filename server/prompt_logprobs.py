"""Prompt logprobs in the API: ``echo`` with ``logprobs`` (completions) and vLLM's
``prompt_logprobs`` field (completions and chat completions).

The engine computes them when ``SamplingParams.prompt_logprobs`` is set; prompt tokens run at
full depth, so they are the full-depth model's numbers whatever the ``skip`` setting.
"""

from __future__ import annotations

from dataclasses import replace

from skipdecode.outputs import RequestOutput
from skipdecode.scheduler import TokenLogprobs
from skipdecode.server.choice_stream import ChoiceSpec
from skipdecode.server.errors import APIError
from skipdecode.server.logprobs import FLOOR
from skipdecode.server.protocol import CompletionRequest, SamplingRequest


def check_prompt_logprobs(body: SamplingRequest) -> None:
    """Refuse ``prompt_logprobs`` with ``stream`` (as vLLM does): they belong to no delta."""
    if body.prompt_logprobs is not None and body.stream:
        message = "prompt_logprobs is not available with stream=true"
        raise APIError(400, message, param="prompt_logprobs")


def with_echo_logprobs(specs: list[ChoiceSpec], body: CompletionRequest) -> list[ChoiceSpec]:
    """The choices' params, asking for prompt logprobs where ``echo`` with ``logprobs`` needs
    them too (the larger top-n of the two requests wins; each reply keeps its own)."""
    if not body.echo or body.logprobs is None:
        return specs
    num_top = max(body.logprobs, body.prompt_logprobs or 0)
    return [replace(s, params=replace(s.params, prompt_logprobs=num_top)) for s in specs]


def echo_logprobs(tokenizer, output: RequestOutput, num_top: int) -> dict:
    """Completions ``logprobs`` for the echoed prompt tokens. The first token has no prefix to
    score it: its logprob and top_logprobs are null (as OpenAI and vLLM return). Offsets count
    from 0, the start of the echoed text."""
    tokens, logprobs, tops, offsets, offset = [], [], [], [], 0
    for token_id, entry in zip(output.prompt_token_ids, output.prompt_logprobs or []):
        token = _decode(tokenizer, token_id)
        tokens.append(token)
        offsets.append(offset)
        offset += len(token)
        logprobs.append(None if entry is None else _clip(entry.logprob))
        tops.append(None if entry is None else _top(tokenizer, entry, num_top))
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def join_logprobs(first: dict, second: dict) -> dict:
    """Two completions ``logprobs`` objects as one (the prompt's, then the generated tokens')."""
    return {key: first[key] + second[key] for key in first}


def vllm_prompt_logprobs(tokenizer, output: RequestOutput, num_top: int) -> list[dict | None]:
    """vLLM's ``prompt_logprobs``: per prompt token, null for the first, else
    ``{"<token id>": {"logprob", "rank", "decoded_token"}}`` for the prompt token and the top-n."""
    result: list[dict | None] = []
    for token_id, entry in zip(output.prompt_token_ids, output.prompt_logprobs or []):
        if entry is None:
            result.append(None)
            continue
        position = {str(token_id): _vllm_entry(tokenizer, token_id, entry.logprob, entry.rank)}
        for rank, (top_id, logprob) in enumerate(list(entry.top.items())[:num_top], start=1):
            position.setdefault(str(top_id), _vllm_entry(tokenizer, top_id, logprob, rank))
        result.append(position)
    return result


def _vllm_entry(tokenizer, token_id: int, logprob: float, rank: int | None) -> dict:
    return {"logprob": _clip(logprob), "rank": rank, "decoded_token": _decode(tokenizer, token_id)}


def _top(tokenizer, entry: TokenLogprobs, num_top: int) -> dict[str, float]:
    top = list(entry.top.items())[:num_top]
    return {_decode(tokenizer, token_id): _clip(logprob) for token_id, logprob in top}


def _decode(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _clip(logprob: float) -> float:
    return max(logprob, FLOOR)  # JSON has no -inf
