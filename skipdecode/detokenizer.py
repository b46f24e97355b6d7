"""Incremental detokenization with stop strings (text never ends in a broken UTF-8 sequence)."""

from __future__ import annotations

CONTEXT_TOKENS = 5  # prompt tokens decoded with the first outputs, so spacing comes out right


class IncrementalDetokenizer:
    """Turns a growing list of output ids into text, one step at a time.

    Holds back text that may still become a stop string, so text shown while a request runs is
    always a prefix of its final text (streamed == non-streamed).
    """

    def __init__(
        self,
        tokenizer,
        prompt_token_ids: list[int],
        stop: tuple[str, ...] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self._ids = list(prompt_token_ids[-CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._skip_special = skip_special_tokens
        self.stop = stop
        self.include_stop = include_stop_str_in_output
        self.text = ""
        self._hold = max((len(s) for s in stop), default=1) - 1
        # A fast tokenizer that cleans up no spaces decodes exactly as its Rust backend: calling
        # the backend directly costs a third of the wrapper's call (twice per token per step).
        cleans_up = getattr(tokenizer, "clean_up_tokenization_spaces", True)
        self._backend = None if cleans_up else getattr(tokenizer, "backend_tokenizer", None)

    def add_tokens(self, token_ids: list[int]) -> str | None:
        """Append new ids; returns the stop string if one now appears (text is then cut)."""
        self._ids.extend(token_ids)
        decode = self._decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset])
        full = decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return None  # an incomplete UTF-8 sequence: wait for the next token
        new_text = full[len(prefix) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        search_from = max(len(self.text) - self._hold, 0)
        self.text += new_text
        return self._cut_at_stop(search_from)

    def visible_text(self, finished: bool) -> str:
        """Text that can be shown now: all of it once finished, else minus a possible stop."""
        if finished or not self.stop or self._hold == 0:
            return self.text
        return self.text[: len(self.text) - self._hold]

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=self._skip_special)
        return self.tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _cut_at_stop(self, search_from: int) -> str | None:
        best: tuple[int, str] | None = None
        for stop in self.stop:
            index = self.text.find(stop, search_from)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return None
        index, stop = best
        self.text = self.text[: index + len(stop) if self.include_stop else index]
        return stop
