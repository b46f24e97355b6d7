"""Logprobs in OpenAI's two shapes (completions: parallel lists; chat: a list of objects)."""

from __future__ import annotations

from skipdecode.scheduler import TokenLogprobs

FLOOR = -9999.0  # JSON has no -inf; vLLM clips the same way


def _clip(value: float) -> float:
    return max(value, FLOOR)


def _text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def completion_logprobs(
    tokenizer, token_ids: list[int], logprobs: list[TokenLogprobs], text_offset: int
) -> dict:
    """``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` for the given tokens;
    offsets count from ``text_offset`` (the length of the text before them)."""
    tokens, offsets, offset = [], [], text_offset
    for token_id in token_ids[: len(logprobs)]:
        token = _text(tokenizer, token_id)
        tokens.append(token)
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [_clip(lp.logprob) for lp in logprobs],
        "top_logprobs": [
            {_text(tokenizer, t): _clip(v) for t, v in lp.top.items()} for lp in logprobs
        ],
        "text_offset": offsets,
    }


def _entry(tokenizer, token_id: int, logprob: float) -> dict:
    token = _text(tokenizer, token_id)
    return {"token": token, "logprob": _clip(logprob), "bytes": list(token.encode("utf-8"))}


def chat_logprobs(tokenizer, token_ids: list[int], logprobs: list[TokenLogprobs]) -> dict:
    """``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}``."""
    content = []
    for token_id, lp in zip(token_ids, logprobs):
        entry = _entry(tokenizer, token_id, lp.logprob)
        entry["top_logprobs"] = [_entry(tokenizer, t, v) for t, v in lp.top.items()]
        content.append(entry)
    return {"content": content}
