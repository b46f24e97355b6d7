"""Chat prompts: one conversation through the tokenizer's chat template, then token ids.

Shared by the server (/v1/chat/completions, /tokenize) and ``LLM.chat``, so the two cannot
render or tokenize a conversation differently.
"""

from __future__ import annotations

from collections.abc import Sequence


def render_chat(
    tokenizer,
    messages: Sequence[dict],
    add_generation_prompt: bool = True,
    chat_template: str | None = None,
    tools: list[dict] | None = None,
) -> str:
    """The prompt text of ``messages`` ({"role", "content"} dicts) under the tokenizer's chat
    template, or ``chat_template`` when given. ValueError if there is no template or the
    template rejects the conversation (jinja ``raise_exception``). ``tools`` (OpenAI tool dicts)
    go to templates that lay them out."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model has no chat template")
    try:
        return tokenizer.apply_chat_template(
            list(messages),
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            chat_template=chat_template,
            **({"tools": tools} if tools else {}),
        )
    except Exception as exc:
        raise ValueError(f"chat template error: {exc}") from exc


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered chat prompt: the template already wrote the special tokens (e.g.
    ``<|im_start|>``), so the tokenizer adds none (no second BOS)."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def check_conversation(messages: object, where: str = "messages") -> list[dict]:
    """``messages`` as a list of {"role": str, "content": str, ...} dicts; a ValueError names the
    first bad field as ``where[i].role`` / ``where[i].content``."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"{where}: expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise ValueError(f"{where}: a conversation needs at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(
                f"{where}[{i}]: expected a dict with 'role' and 'content',"
                f" got {type(message).__name__}"
            )
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = "missing" if key not in message else type(message[key]).__name__
                raise ValueError(f"{where}[{i}].{key}: expected a string ({got})")
    return list(messages)
