"""Chat prompts for training and evaluation: one prompt per conversation, and its answers.

A conversation gives one prompt: its messages up to and including the first user turn (any
system message before it kept), rendered with the model's chat template and the generation
prompt, tokenized the way the engine tokenizes a prompt string (as the server's chat endpoint
does). The dataset's own answer to that turn is the *reference*: its tokens, cut at
``max_answer_tokens``, followed by EOS when it was not cut. Conversations whose prompt does not
fit ``max_prompt_tokens`` (with ``max_answer_tokens`` of room left in the model's context) are
left out and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from skipdecode.chat import chat_prompt_ids, render_chat
from skipdecode.datasets import Conversation

DEFAULT_MAX_PROMPT_TOKENS = 256
DEFAULT_MAX_ANSWER_TOKENS = 128
PROMPT_FORMAT = (
    "chat template over the messages up to and including the first user turn, with the"
    " generation prompt; rendered and tokenized as the server's chat endpoint does"
)


@dataclass(frozen=True)
class ChatPrompt:
    """One conversation's prompt and the dataset's answer to it (its reference)."""

    id: str
    prompt_ids: list[int]
    reference_ids: list[int]  # the dataset's answer, cut at max_answer_tokens (+ EOS if whole)
    messages: tuple[dict[str, str], ...]  # the prompt's messages (for logs and side by sides)


def first_turn(conversation: Conversation) -> tuple[list[dict[str, str]], str]:
    """(messages up to the first answered user turn, the answer to it)."""
    messages = list(conversation.messages)
    for index, (a, b) in enumerate(zip(messages, messages[1:])):
        if a["role"] == "user" and b["role"] == "assistant" and a["content"].strip():
            return messages[: index + 1], b["content"]
    raise ValueError(f"conversation {conversation.id!r} has no answered user turn")


def prompt_ids(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """The chat-template prompt, rendered and tokenized as the server's chat endpoint does."""
    return chat_prompt_ids(tokenizer, render_chat(tokenizer, messages))


def answer_ids(tokenizer, answer: str, max_answer_tokens: int) -> list[int]:
    """The answer's tokens cut at ``max_answer_tokens``, + EOS when the whole answer fits."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: whole answers must end in one")
    ids = list(tokenizer(answer, add_special_tokens=False).input_ids)
    if len(ids) >= max_answer_tokens:
        return ids[:max_answer_tokens]
    return ids + [tokenizer.eos_token_id]


def build_prompts(
    tokenizer,
    conversations: Sequence[Conversation],
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
    max_model_len: int | None = None,
    limit: int | None = None,
) -> tuple[list[ChatPrompt], int]:
    """(prompts that fit, number left out); stops after ``limit`` prompts when given."""
    if max_prompt_tokens < 1 or max_answer_tokens < 1:
        raise ValueError("max_prompt_tokens and max_answer_tokens must be >= 1")
    if max_model_len is not None:
        max_prompt_tokens = min(max_prompt_tokens, max_model_len - max_answer_tokens)
    prompts: list[ChatPrompt] = []
    num_left_out = 0
    for conversation in conversations:
        if limit is not None and len(prompts) >= limit:
            break
        messages, answer = first_turn(conversation)
        ids = prompt_ids(tokenizer, messages)
        if len(ids) > max_prompt_tokens or not answer.strip():
            num_left_out += 1
            continue
        reference = answer_ids(tokenizer, answer, max_answer_tokens)
        prompts.append(ChatPrompt(conversation.id, ids, reference, tuple(messages)))
    return prompts, num_left_out
