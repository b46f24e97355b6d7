"""One streamed OpenAI-style completion, timed chunk by chunk; loopback-only base URLs.

Works against any OpenAI-compatible ``/v1/completions`` (ours, vLLM, llama.cpp's server): the
request asks for ``stream: true`` with ``stream_options.include_usage``, and sends ``max_tokens``
with ``ignore_eos: true`` so that every request generates the same number of tokens.
"""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

LOOPBACK_NAMES = ("localhost",)

# Common English words, one token each with a leading space in most BPE vocabularies.
_WORD_TEXT = (
    "the of and to in is was for on that with as by at from his her it an were are which this"
    " be or has had not but one first new two after also who their they have its all been more"
    " time year may when other there would into during most some world state city part known"
    " used many made where later such three between only over under both these while about"
    " house water river music film team game school family season church road light"
)
WORDS = tuple(_WORD_TEXT.split())


def check_loopback(base_url: str) -> str:
    """Return ``base_url`` without a trailing slash if its host is loopback, else ValueError.

    Loopback means 127.0.0.0/8, ``::1`` or ``localhost``: this tool loads a server with
    traffic, so it only ever talks to one on this machine.
    """
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"--base-url {base_url!r} is not a valid URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"--base-url {base_url!r} must be an http(s) URL with a host")
    host = url.host.lower()
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = host in LOOPBACK_NAMES
    if not is_loopback:
        raise ValueError(
            f"--base-url host {url.host!r} is not a loopback address: bench serve only drives"
            " servers on this machine (127.0.0.0/8, localhost, ::1)"
        )
    return base_url.rstrip("/")


def random_word_prompts(num_prompts: int, input_len: int, seed: int) -> list[str]:
    """``num_prompts`` strings of ``input_len`` random common words (about as many tokens)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(WORDS), size=(num_prompts, input_len))
    return [" ".join(WORDS[i] for i in row) for row in picks]


def completion_body(
    prompt: str | list[int],
    max_tokens: int,
    model: str | None = None,
    skip: dict | None = None,
) -> dict:
    """The JSON body of one greedy, streamed, fixed-length completion."""
    body: dict = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model is not None:
        body["model"] = model
    if skip is not None:
        body["skip"] = skip
    return body


@dataclass
class RequestResult:
    """What one request measured (seconds, from just before the request was sent)."""

    ok: bool = False
    error: str | None = None
    ttft: float | None = None  # first chunk with text
    itls: list[float] = field(default_factory=list)  # gaps between chunks with text
    e2e: float | None = None  # until the stream ended ([DONE] or close)
    num_chunks: int = 0  # chunks that carried text
    usage: dict | None = None  # the final chunk's usage, if the server sent one

    @property
    def num_output_tokens(self) -> int:
        """Tokens from the server's usage if given, else the text chunks counted."""
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return self.usage["completion_tokens"]
        return self.num_chunks


def _chunk_text(choice: dict) -> str:
    # Completions chunks carry ``text``; chat chunks ``delta.content``.
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


async def stream_completion(
    client: httpx.AsyncClient, url: str, body: dict, headers: dict[str, str]
) -> RequestResult:
    """POST ``body`` with streaming and time each chunk; errors are returned, not raised."""
    result = RequestResult()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {text[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = f"error in stream: {str(chunk['error'])[:200]}"
                    return result
                if chunk.get("usage"):
                    result.usage = chunk["usage"]
                if any(_chunk_text(c) for c in chunk.get("choices") or []):
                    now = time.perf_counter()
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.itls.append(now - last)
                    last = now
                    result.num_chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
        return result
    result.e2e = time.perf_counter() - start
    result.ok = True
    return result
