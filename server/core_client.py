"""The API server's side of the engine-core process: the AsyncEngine interface over ZMQ.

Requests are checked here (the same RequestFactory the engine uses) and sent to the core; each
message the core sends back carries one step's new tokens for every request, which are
detokenized here (stop strings too: a request that hits one is finished here and aborted in the
core). A thread receives the core's messages and hands each batch to the event loop; it also
watches the process, so an engine that dies fails its requests at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator

import zmq

from skipdecode.async_engine import (
    EngineDeadError,
    QueueFullError,
    RequestLogger,
    StepFailedError,
    StepLogger,
    iterate_outputs,
)
from skipdecode.config import EngineConfig
from skipdecode.core_protocol import (
    AbortRequests,
    AddRequest,
    CoreOutputs,
    Occupancy,
    Shutdown,
    TokenDelta,
    encoder,
    output_decoder,
)
from skipdecode.detokenizer import IncrementalDetokenizer
from skipdecode.outputs import RequestOutput
from skipdecode.scheduler import SamplingParams, SkipConfig
from skipdecode.server.core_process import spawn_core
from skipdecode.server.remote_request import EngineFront, RemoteRequest

logger = logging.getLogger(__name__)
RECEIVE_POLL_MS = 500


class EngineCoreClient:
    """Starts the engine-core process and serves the AsyncEngine interface against it.

    ``start`` (blocking: it waits for the model to load) and ``shutdown`` may run on a worker
    thread; everything else runs on the event loop given to ``start``.
    """

    def __init__(
        self,
        config: EngineConfig,
        max_queue_len: int | None = None,
        step_loggers: list[StepLogger] | None = None,
        request_loggers: list[RequestLogger] | None = None,
        num_threads: int | None = None,
        log_level: str = "info",
    ) -> None:
        self.config = config
        self.max_queue_len = max_queue_len
        self.step_loggers = list(step_loggers or [])
        self.request_loggers = list(request_loggers or [])
        self.num_threads = num_threads or len(os.sched_getaffinity(0))
        self.log_level = log_level
        self.engine: EngineFront | None = None
        self.last_error: BaseException | None = None
        self._streams: dict[str, RemoteRequest] = {}
        self._occupancy = Occupancy(0, 0, 0, 0)
        self._dead: str | None = None
        self._closing = False
        self._send_lock = threading.Lock()
        self._encode = encoder().encode
        self._decode = output_decoder().decode

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Spawn the core, wait until its engine is loaded; RuntimeError if it cannot load."""
        self._loop = loop
        self._core = spawn_core(self.config, self.num_threads, self.log_level)
        self.engine = EngineFront(self._core.info)
        logger.info("engine process %d ready (%d torch threads)", self.engine.pid, self.num_threads)
        self._receiver = threading.Thread(
            target=self._receive, name="skipdecode-core-receiver", daemon=True
        )
        self._receiver.start()

    @property
    def is_running(self) -> bool:
        return self._dead is None and self._core.process.is_alive()

    @property
    def num_unfinished(self) -> int:
        return len(self._streams)

    def occupancy(self) -> dict[str, int]:
        """The core's counts as of its last message."""
        o = self._occupancy
        return {
            "num_running": o.num_running,
            "num_waiting": o.num_waiting,
            "kv_used_blocks": o.kv_used_blocks,
            "kv_total_blocks": o.kv_total_blocks,
        }

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the core to exit (what still runs is dropped), wait for it, close the sockets."""
        self._closing = True
        with contextlib.suppress(zmq.ZMQError):
            self._send(Shutdown())
        self._core.stop(timeout)
        self._receiver.join(timeout)
        self._core.close()

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
        remote = self.submit(prompt, params, skip, request_id)
        return self._iterate(remote)

    def submit(self, prompt, params, skip=None, request_id=None) -> RemoteRequest:
        if not self.is_running:
            raise EngineDeadError(self._dead or "the engine process is not running")
        # A request counts as waiting until its first token comes back.
        waiting = sum(1 for r in self._streams.values() if r.first_token_at is None)
        if self.max_queue_len is not None and waiting >= self.max_queue_len:
            raise QueueFullError(f"the waiting queue is full ({waiting} requests)")
        request = self.engine.requests.make_request(
            prompt, params, skip, request_id, with_grammar=False
        )
        if request.request_id in self._streams:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        params = request.sampling_params
        detokenizer = None
        if self.engine.tokenizer is not None:
            detokenizer = IncrementalDetokenizer(
                self.engine.tokenizer,
                request.prompt_token_ids,
                params.stop,
                params.include_stop_str_in_output,
            )
        remote = RemoteRequest(asyncio.Queue(), request, detokenizer)
        self._streams[request.request_id] = remote
        self._send(AddRequest(request.request_id, request.prompt_token_ids, params, skip))
        return remote

    def _iterate(self, remote: RemoteRequest) -> AsyncIterator[RequestOutput]:
        return iterate_outputs(remote.queue, lambda: self.abort(remote.request.request_id))

    def abort(self, request_id: str) -> None:
        remote = self._streams.pop(request_id, None)
        if remote is None:
            return
        if self.is_running:
            self._send(AbortRequests([request_id]))
        self._log_request(remote, "abort")

    def _send(self, message) -> None:
        with self._send_lock:
            self._core.input.send(self._encode(message), copy=False)

    # ---- what the core sends ---------------------------------------------------------------

    def _receive(self) -> None:
        """The receiver thread: hand each batch of messages to the loop; notice a dead core."""
        poller = zmq.Poller()
        poller.register(self._core.output, zmq.POLLIN)
        poller.register(self._core.process.sentinel, zmq.POLLIN)
        dead = None
        while True:
            events = dict(poller.poll(RECEIVE_POLL_MS))
            batch = self._drain() if self._core.output in events else []
            exited = self._core.process.sentinel in events
            if exited:
                batch += self._drain()
            dead = next((m.dead for m in batch if m.dead), dead)
            if batch:
                self._call_soon(self._dispatch, batch)
            if exited:
                self._core.process.join(5)
                reason = "the engine stopped"
                if not self._closing:
                    reason = (
                        dead or f"the engine process exited (code {self._core.process.exitcode})"
                    )
                    logger.error("engine process died: %s", reason)
                self._call_soon(self._on_death, reason)
                return

    def _drain(self) -> list[CoreOutputs]:
        batch = []
        while True:
            try:
                batch.append(self._decode(self._core.output.recv(zmq.NOBLOCK)))
            except zmq.Again:
                return batch

    def _call_soon(self, callback, *args) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to tell
            self._loop.call_soon_threadsafe(callback, *args)

    def _dispatch(self, batch: list[CoreOutputs]) -> None:
        now = time.monotonic()
        for message in batch:
            self._occupancy = message.occupancy
            for failure in message.failures:
                error_type = ValueError if failure.kind == "invalid" else StepFailedError
                for request_id in failure.request_ids:
                    remote = self._streams.pop(request_id, None)
                    if remote is not None:
                        remote.queue.put_nowait(error_type(failure.message))
            for delta in message.deltas:
                self._apply(delta, now)
            if message.step is not None:
                for log in self.step_loggers:
                    log(message.step)

    def _apply(self, delta: TokenDelta, now: float) -> None:
        remote = self._streams.get(delta.request_id)
        if remote is None:  # aborted here, or finished by a stop string
            return
        output, stopped_here = remote.apply(delta, now)
        if stopped_here:  # a stop string: the core would keep running it
            self._send(AbortRequests([delta.request_id]))
        remote.queue.put_nowait(output)
        if output.finished:
            del self._streams[delta.request_id]
            self._log_request(remote, output.finish_reason, delta.queue_seconds)

    def _on_death(self, reason: str) -> None:
        self._dead = reason
        self.last_error = EngineDeadError(reason)
        for request_id in list(self._streams):
            self._streams.pop(request_id).queue.put_nowait(EngineDeadError(reason))

    def _log_request(
        self, remote: RemoteRequest, finish_reason: str, queue_seconds: float | None = None
    ) -> None:
        stats = remote.stats(finish_reason, queue_seconds)
        for log in self.request_loggers:
            log(stats)
