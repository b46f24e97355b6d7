"""One chat choice's reply as streamed deltas: content, or tool calls the SDK assembles.

The engine gives the cumulative text of a choice; :class:`ReplyStream` turns it into the
``delta`` of each chunk so that the deltas add up to the non-streamed message:
- without tool parsing, every new character is content;
- ``auto``: content streams until a ``<tool_call>`` block may begin (a possible start of the tag
  and trailing whitespace are held back); the calls go out when the reply ends;
- a named function: the arguments stream as they are generated;
- ``required``: the calls go out when the reply ends (the JSON array must be complete to split).
"""

from __future__ import annotations

from skipdecode.server.tool_calls import CALL_OPEN, ToolPlan, new_call_id, parse_reply


class ReplyStream:
    """Deltas of one choice; after the last one, ``calls`` holds the parsed tool calls."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.calls: list[dict] = []
        self._sent = 0  # characters of the text already sent (as content or arguments)
        self._call_id = new_call_id()

    def delta(self, text: str, finished: bool) -> dict:
        """The delta for the text so far (``{}`` when there is nothing new to send)."""
        mode = self.plan.mode
        if mode == "named":
            return self._arguments_delta(text, finished)
        if mode == "required":
            return self._final_delta(text) if finished else {}
        if mode == "auto":
            if finished:
                return self._final_delta(text)
            return self._content(text, _safe_end(text))
        return self._content(text, len(text))

    def _content(self, text: str, end: int) -> dict:
        if end <= self._sent:
            return {}
        chunk, self._sent = text[self._sent : end], end
        return {"content": chunk}

    def _arguments_delta(self, text: str, finished: bool) -> dict:
        if finished:
            _, self.calls = parse_reply(text, self.plan)
            for call in self.calls:  # the id the client already has
                call["id"] = self._call_id
        chunk = text[self._sent :]
        first = self._sent == 0
        if not chunk and not first:
            return {}
        self._sent = len(text)
        call: dict = {"index": 0, "function": {"arguments": chunk}}
        if first:
            call = {
                "index": 0,
                "id": self._call_id,
                "type": "function",
                "function": {"name": self.plan.function_name, "arguments": chunk},
            }
        return {"tool_calls": [call]}

    def _final_delta(self, text: str) -> dict:
        content, self.calls = parse_reply(text, self.plan)
        if not self.calls:
            return self._content(text, len(text))
        delta: dict = {"tool_calls": [{"index": i, **call} for i, call in enumerate(self.calls)]}
        rest = (content or "")[self._sent :]
        if rest:
            delta["content"] = rest
        return delta


def _safe_end(text: str) -> int:
    """How much of a running ``auto`` reply can be sent as content: up to a ``<tool_call>`` tag
    or a possible start of one at the end, without the whitespace before it."""
    if CALL_OPEN in text:
        end = text.index(CALL_OPEN)
    else:
        end = len(text)
        for size in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
            if CALL_OPEN.startswith(text[-size:]):
                end = len(text) - size
                break
    return len(text[:end].rstrip())
