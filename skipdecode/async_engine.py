"""The engine behind the server: one background thread steps it; asyncio code awaits outputs."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from skipdecode.engine import Engine
from skipdecode.outputs import RequestOutput
from skipdecode.scheduler import Request, SamplingParams, SkipConfig
from skipdecode.stats import RequestStats, StepStats

logger = logging.getLogger(__name__)
IDLE_WAIT_S = 0.05  # how long the idle loop sleeps before looking at its inbox again


class QueueFullError(RuntimeError):
    """The waiting queue is at --max-queue-len: the caller should retry later (HTTP 503)."""


class EngineDeadError(RuntimeError):
    """The engine loop is not running (HTTP 503)."""


class StepFailedError(RuntimeError):
    """An exception inside an engine step ended this request (HTTP 500)."""


StepLogger = Callable[[StepStats], None]
RequestLogger = Callable[[RequestStats], None]


@dataclass
class _Stream:
    """The asyncio side of one request, plus its latency bookkeeping (engine thread writes)."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    request: Request
    arrival: float = field(default_factory=time.monotonic)
    last_token_at: float | None = None
    first_token_at: float | None = None
    inter_token: list[float] = field(default_factory=list)

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    """Owns the engine thread; everything that touches the ``Engine`` runs on that thread.

    The event loop validates requests (``Engine.make_request`` reads no mutable state), hands
    them over through an inbox, and awaits per-request queues, so it never blocks on compute.
    """

    def __init__(
        self,
        engine: Engine,
        max_queue_len: int | None = None,
        step_loggers: list[StepLogger] | None = None,
        request_loggers: list[RequestLogger] | None = None,
    ) -> None:
        self.engine = engine
        self.max_queue_len = max_queue_len
        self.step_loggers = list(step_loggers or [])
        self.request_loggers = list(request_loggers or [])
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._num_pending = 0  # requests in the inbox, not yet in the scheduler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="skipdecode-engine", daemon=True)
        self.last_error: BaseException | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    @property
    def num_unfinished(self) -> int:
        return len(self._streams)

    def occupancy(self) -> dict[str, int]:
        """The scheduler's and the KV cache's counts (plain reads from another thread)."""
        engine = self.engine
        return {
            "num_running": len(engine.scheduler.running),
            "num_waiting": len(engine.scheduler.waiting),
            "kv_used_blocks": engine.kv_cache.num_used_blocks,
            "kv_total_blocks": engine.kv_cache.num_blocks,
        }

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop thread (after aborting whatever is still running)."""
        self._inbox.put(("shutdown", None))
        self._wakeup.set()
        self._thread.join(timeout)

    # ---- requests --------------------------------------------------------------------------

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        skip: SkipConfig | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream snapshots of one request; raises ValueError/QueueFullError before the first.

        Leaving the iteration early (a client that disconnected) aborts the request.
        """
        stream = self.submit(prompt, params, skip, request_id)
        return self._iterate(stream)

    def submit(self, prompt, params, skip=None, request_id=None) -> _Stream:
        if not self.is_running:
            raise EngineDeadError("the engine loop is not running")
        waiting = len(self.engine.scheduler.waiting) + self._num_pending
        if self.max_queue_len is not None and waiting >= self.max_queue_len:
            raise QueueFullError(f"the waiting queue is full ({waiting} requests)")
        request = self.engine.make_request(prompt, params, skip, request_id)
        if request.request_id in self._streams:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), request)
        self._streams[request.request_id] = stream
        self._num_pending += 1
        self._inbox.put(("add", request))
        self._wakeup.set()
        return stream

    def _iterate(self, stream: _Stream) -> AsyncIterator[RequestOutput]:
        return iterate_outputs(stream.queue, lambda: self.abort(stream.request.request_id))

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wakeup.set()

    # ---- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._drain_inbox():
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait(IDLE_WAIT_S)
                    self._wakeup.clear()
                    continue
                self._step()
        except BaseException as exc:  # the loop must never die silently
            logger.exception("engine loop died")
            self.last_error = exc
        finally:
            self._stop.set()
            self._fail_all(EngineDeadError("the engine stopped"))

    def _drain_inbox(self) -> bool:
        """Apply queued adds/aborts; False once shutdown was asked for."""
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return True
            if kind == "add":
                self._num_pending -= 1
                self.engine.add(payload)
            elif kind == "abort":
                self._abort(payload)
            elif kind == "shutdown":
                return False

    def _abort(self, request_id: str) -> None:
        output = self.engine.abort_request(request_id)
        stream = self._streams.pop(request_id, None)
        if output is not None and stream is not None:
            self._log_request(stream, output)

    def _step(self) -> None:
        try:
            outputs, stats = self.engine.step_with_stats()
        except Exception as exc:  # fail the requests of this step, keep serving the others
            logger.exception("engine step failed")
            self.last_error = exc
            # The failed step ran (some of) the running requests; if it failed before any ran
            # (inside schedule()), the waiting ones are what it was about to run. Failing them
            # ends the retry loop either way.
            scheduler = self.engine.scheduler
            victims = list(scheduler.running) or list(scheduler.waiting)
            for request in victims:
                self._fail(request.request_id, StepFailedError(f"engine step failed: {exc}"))
            return
        now = time.monotonic()
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            if stream.first_token_at is None:
                stream.first_token_at = now
            else:
                stream.inter_token.append(now - stream.last_token_at)
            stream.last_token_at = now
            stream.put(output)
            if output.finished:
                del self._streams[output.request_id]
                self._log_request(stream, output)
        if stats is not None:
            for log in self.step_loggers:
                log(stats)

    def _fail(self, request_id: str, error: BaseException) -> None:
        self.engine.abort_request(request_id)
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.put(error)

    def _fail_all(self, error: BaseException) -> None:
        for request_id in list(self._streams):
            try:
                self._fail(request_id, error)
            except Exception:  # the engine may be broken; the client still gets its error
                stream = self._streams.pop(request_id, None)
                if stream is not None:
                    stream.put(error)

    def _log_request(self, stream: _Stream, output: RequestOutput) -> None:
        request = stream.request
        scheduled = request.first_scheduled_time
        stats = RequestStats(
            finish_reason=output.finish_reason or "abort",
            num_prompt_tokens=output.num_prompt_tokens,
            num_generation_tokens=output.num_generated_tokens,
            queue_seconds=None if scheduled is None else scheduled - request.arrival_time,
            time_to_first_token=(
                None if stream.first_token_at is None else stream.first_token_at - stream.arrival
            ),
            inter_token_latencies=stream.inter_token,
            e2e_seconds=time.monotonic() - stream.arrival,
            theoretical_speedup=output.theoretical_speedup,
            num_layers_computed=output.num_layers_computed,
            num_layers_skipped=output.num_layers_skipped,
        )
        for log in self.request_loggers:
            log(stats)


async def iterate_outputs(
    queue: asyncio.Queue, abort: Callable[[], None]
) -> AsyncIterator[RequestOutput]:
    """Yield a request's snapshots from ``queue`` until the final one (an exception put there is
    raised); ``abort()`` runs if the caller stops early (a client that disconnected)."""
    finished = False
    try:
        while not finished:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            finished = item.finished
            yield item
    finally:
        if not finished:
            abort()
