"""POST /tokenize and /detokenize (vLLM's shapes)."""

from __future__ import annotations

from skipdecode.server.engine_client import EngineClient
from skipdecode.server.errors import APIError
from skipdecode.server.protocol import DetokenizeRequest, TokenizeRequest


async def tokenize(client: EngineClient, body: TokenizeRequest) -> dict:
    """Token ids of ``prompt``, or of ``messages`` rendered through the chat template."""
    client.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of prompt and messages", param="prompt")
    if body.messages is not None:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        text = await client.render_chat(messages, body.add_generation_prompt)
        tokens = await client.tokenize_text(text, add_special_tokens=False)
    else:
        tokens = await client.tokenize_text(body.prompt, body.add_special_tokens)
    return {"count": len(tokens), "max_model_len": client.max_model_len, "tokens": tokens}


def detokenize(client: EngineClient, body: DetokenizeRequest) -> dict:
    client.check_model(body.model)
    client.tokenize(body.tokens, param="tokens")  # checks the ids against the vocabulary
    return {"prompt": client.decode(body.tokens)}
