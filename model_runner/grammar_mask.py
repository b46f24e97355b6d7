"""Grammar masks for one step: filled beside the forward pass, applied after the LM head.

The tokens a constrained sequence may emit next depend only on the tokens it already has, so a
step's masks can be computed while its layers run: :class:`MaskJob` starts llguidance on a
worker thread (llguidance drops the GIL while it fills the bitmask) before the forward, and the
runner collects the bitmask after the LM head. Unconstrained rows get no mask and steps without
a constrained row start no job.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import llguidance
import torch

_BITS = 32
_BIT_VALUES = torch.tensor([1 << b for b in range(_BITS)], dtype=torch.int64)  # bit b of a word


def bitmask_width(vocab_size: int) -> int:
    """int32 words per row of a bitmask over ``vocab_size`` tokens."""
    return (vocab_size + _BITS - 1) // _BITS


class MaskJob:
    """The bitmask rows of a step's constrained sequences, computed on a worker thread."""

    def __init__(self, pool: ThreadPoolExecutor, executor: Any, grammars: list, vocab_size: int):
        self.bitmask = torch.full((len(grammars), bitmask_width(vocab_size)), -1, dtype=torch.int32)
        self._future: Future = pool.submit(self._fill, executor, grammars)

    def _fill(self, executor: Any, grammars: list) -> None:
        matchers = [(g.matcher, row) for row, g in enumerate(grammars)]
        row_bytes = self.bitmask.shape[1] * 4
        try:
            executor.unsafe_compute_mask_ptr(
                matchers, self.bitmask.data_ptr(), row_bytes, len(matchers)
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a Rust panic: fail the step, not the engine thread
            raise RuntimeError(f"grammar mask failed: {exc}") from exc

    def result(self) -> torch.Tensor:
        """``[num_constrained, words]`` int32 bitmask (bit ``t % 32`` of word ``t // 32``)."""
        self._future.result()
        return self.bitmask


class GrammarMasker:
    """Starts mask jobs for a runner and applies their bitmasks to logits rows."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._pool: ThreadPoolExecutor | None = None
        self._executor: Any = None

    def start(self, grammars: list) -> MaskJob:
        """Begin filling one bitmask row per grammar (in order)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="grammar-mask")
            self._executor = llguidance.LLExecutor()
        return MaskJob(self._pool, self._executor, grammars, self.vocab_size)

    def apply(self, logits: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor) -> None:
        """Set to ``-inf`` (in place) the logits of ``rows`` whose token the bitmask forbids."""
        allowed = unpack_bitmask(bitmask, logits.shape[1])
        masked = logits[rows].masked_fill(~allowed.to(logits.device), float("-inf"))
        logits[rows] = masked


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[rows, vocab_size]`` bool: token ``t`` is allowed where bit ``t % 32`` of word
    ``t // 32`` is set (llguidance's layout). Tokens past the bitmask's words are forbidden."""
    words = bitmask.to(torch.int64) & 0xFFFFFFFF  # [rows, W], as unsigned
    bits = (words.unsqueeze(-1) & _BIT_VALUES.to(bitmask.device)) != 0  # [rows, W, 32]
    allowed = bits.flatten(1)  # [rows, W * 32]
    if allowed.shape[1] >= vocab_size:
        return allowed[:, :vocab_size]
    pad = torch.zeros(allowed.shape[0], vocab_size - allowed.shape[1], dtype=torch.bool)
    return torch.cat([allowed, pad], dim=1)
