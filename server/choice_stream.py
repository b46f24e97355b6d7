"""The engine requests behind one API response (n choices x prompts), merged into one stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from skipdecode.async_engine import AsyncEngine
from skipdecode.outputs import RequestOutput
from skipdecode.scheduler import SamplingParams, SkipConfig

_ABORT = object()  # queued by abort(): end every unfinished choice now


@dataclass(frozen=True)
class ChoiceSpec:
    """One API choice: which prompt, with which params, under which engine request id."""

    index: int  # the choice's ``index`` in the response
    prompt_index: int  # which prompt of a batched completion it answers
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str


class ChoiceStream:
    """Yields ``(choice index, RequestOutput)`` as the engine produces them, for all choices.

    ``open()`` submits every request first, so errors that come before the first output
    (ValueError, QueueFullError, EngineDeadError) raise there, with nothing left queued.
    ``aclose()`` (always call it; it runs when a client disconnects too) aborts each request
    that has not finished. ``abort()`` (server shutdown) ends each unfinished choice with
    ``finish_reason="abort"``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        specs: list[ChoiceSpec],
        on_close: Callable[[ChoiceStream], None] | None = None,
    ) -> None:
        self.specs = specs
        self._engine = engine
        self._on_close = on_close
        self._queue: asyncio.Queue = asyncio.Queue()
        self._iterators: list[AsyncIterator[RequestOutput]] = []
        self._pumps: list[asyncio.Task] = []
        self._last: dict[int, RequestOutput] = {}
        self._finished: set[int] = set()
        self._is_closed = False

    async def open(self, skip: SkipConfig | None) -> None:
        try:
            for spec in self.specs:
                iterator = await self._engine.generate(
                    spec.prompt_ids, spec.params, skip, spec.request_id
                )
                self._iterators.append(iterator)
        except BaseException:
            await self.aclose()
            raise
        self._pumps = [
            asyncio.create_task(self._pump(spec.index, iterator))
            for spec, iterator in zip(self.specs, self._iterators)
        ]

    async def _pump(self, index: int, iterator: AsyncIterator[RequestOutput]) -> None:
        try:
            async for output in iterator:
                self._queue.put_nowait((index, output))
        except Exception as exc:  # StepFailedError, EngineDeadError: the consumer re-raises it
            self._queue.put_nowait((index, exc))

    async def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        while len(self._finished) < len(self.specs):
            index, item = await self._queue.get()
            if item is _ABORT:
                for spec in self.specs:
                    if spec.index not in self._finished:
                        self._finished.add(spec.index)
                        yield spec.index, self._aborted(spec)
                return
            if isinstance(item, BaseException):
                raise item
            self._last[index] = item
            if item.finished:
                self._finished.add(index)
            yield index, item

    def abort(self) -> None:
        """End the stream now: each unfinished choice gets a final output marked "abort"."""
        self._queue.put_nowait((None, _ABORT))

    def _aborted(self, spec: ChoiceSpec) -> RequestOutput:
        last = self._last.get(spec.index)
        if last is not None:
            return replace(last, new_token_ids=[], finished=True, finish_reason="abort")
        return RequestOutput(
            request_id=spec.request_id,
            prompt_token_ids=spec.prompt_ids,
            token_ids=[],
            new_token_ids=[],
            text="",
            depths=[],
            num_layers=self._engine.engine.num_layers,
            finished=True,
            finish_reason="abort",
            stop_reason=None,
            logprobs=[] if spec.params.logprobs is not None else None,
            theoretical_speedup=1.0,
        )

    async def aclose(self) -> None:
        if self._is_closed:
            return
        self._is_closed = True
        # Abort synchronously first: when the caller is being cancelled (a client that went
        # away), every later await may raise CancelledError again.
        for pump in self._pumps:
            pump.cancel()
        for spec in self.specs[: len(self._iterators)]:
            if spec.index not in self._finished:
                self._engine.abort(spec.request_id)
        if self._on_close is not None:
            self._on_close(self)
        await asyncio.gather(*self._pumps, return_exceptions=True)
