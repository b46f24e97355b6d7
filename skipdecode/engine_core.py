"""The engine-core process: schedules and runs steps; the API server process talks to it over ZMQ.

As in vLLM's V1 design, the API process parses, tokenizes, detokenizes and streams, and this
process only steps the engine, so the two never wait for each other's interpreter lock. Inputs
(adds, aborts) are applied between steps; each step's new tokens for every request go out as one
message. The process exits on ``Shutdown``, when its parent dies, or after reporting that its
loop died.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import traceback
from multiprocessing.connection import Connection

import zmq

from skipdecode.config import EngineConfig
from skipdecode.core_protocol import (
    AbortRequests,
    AddRequest,
    CoreOutputs,
    EngineInfo,
    Failure,
    Occupancy,
    Shutdown,
    TokenDelta,
    encoder,
    input_decoder,
)

logger = logging.getLogger(__name__)
IDLE_POLL_MS = 50  # how long an idle core waits for input before checking on its parent
PR_SET_PDEATHSIG = 1


def run_engine_core(
    config: EngineConfig,
    input_address: str,
    output_address: str,
    ready: Connection,
    num_threads: int,
    log_level: str,
) -> None:
    """The process's entry point: load the engine, report ready (or why not), serve inputs."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s engine-core: %(message)s"
    )
    parent = os.getppid()
    _die_with_parent()
    # The API process owns the terminal's signals: it drains, then sends Shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import torch

    from skipdecode.engine import Engine

    torch.set_num_threads(num_threads)
    try:
        engine = Engine(config)
    except BaseException as exc:
        ready.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    engine.detokenize = False
    ready.send(("ready", _engine_info(engine)))
    ready.close()
    context = zmq.Context()
    inputs, outputs = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    inputs.connect(input_address)
    outputs.connect(output_address)
    try:
        EngineCore(engine, outputs, parent).run(inputs)
    finally:
        outputs.close(linger=1000)
        inputs.close(linger=0)
        context.term()


def _engine_info(engine) -> EngineInfo:
    return EngineInfo(
        tokenizer=engine.tokenizer,
        vocab_size=engine.hf_config.vocab_size,
        logits_size=engine.runner.vocab_size,
        num_layers=engine.num_layers,
        max_model_len=engine.max_model_len,
        default_skip=engine.default_skip,
        preset_family=engine.preset_family,
        scheduler_config=engine.scheduler_config,
        kv_geometry=(engine.kv_cache.num_blocks, engine.kv_cache.block_size),
        eos_token_ids=frozenset(engine.eos_token_ids),
        pid=os.getpid(),
    )


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a killed server leaves no core)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent check in the loop covers it
        pass


class EngineCore:
    """The loop: apply inputs, step, send what the step produced."""

    def __init__(self, engine, outputs: zmq.Socket, parent_pid: int) -> None:
        self.engine = engine
        self.outputs = outputs
        self.parent_pid = parent_pid
        self._encode = encoder().encode
        self._decode = input_decoder().decode

    def run(self, inputs: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(inputs, zmq.POLLIN)
        try:
            while True:
                busy = self.engine.has_unfinished_requests()
                if poller.poll(0 if busy else IDLE_POLL_MS):
                    failures, keep_going = self._apply_inputs(inputs)
                    self._send(CoreOutputs(self._occupancy(), failures=failures))
                    if not keep_going:
                        return
                if os.getppid() != self.parent_pid:
                    logger.warning("the API server process is gone: exiting")
                    return
                if busy:
                    self._step()
        except BaseException as exc:
            logger.exception("engine loop died")
            self._send(CoreOutputs(self._occupancy(), dead=f"{type(exc).__name__}: {exc}"))
            raise

    def _apply_inputs(self, inputs: zmq.Socket) -> tuple[list[Failure], bool]:
        """Every queued input, in order; False once Shutdown came."""
        failures: list[Failure] = []
        while True:
            try:
                message = self._decode(inputs.recv(zmq.NOBLOCK))
            except zmq.Again:
                return failures, True
            if isinstance(message, AddRequest):
                failure = self._add(message)
                if failure is not None:
                    failures.append(failure)
            elif isinstance(message, AbortRequests):
                for request_id in message.request_ids:
                    self.engine.abort_request(request_id)
            elif isinstance(message, Shutdown):
                return failures, False

    def _add(self, message: AddRequest) -> Failure | None:
        try:
            request = self.engine.make_request(
                message.prompt_token_ids, message.params, message.skip, message.request_id
            )
            self.engine.add(request)
        except ValueError as exc:  # the API process checked it; a duplicate id can still land
            return Failure([message.request_id], str(exc), kind="invalid")
        return None

    def _step(self) -> None:
        try:
            updated, stats = self.engine.step_requests()
        except Exception as exc:  # fail the requests of this step, keep serving the others
            logger.exception("engine step failed")
            scheduler = self.engine.scheduler
            victims = [r.request_id for r in (scheduler.running or scheduler.waiting)]
            for request_id in victims:
                self.engine.abort_request(request_id)
            failure = Failure(victims, f"engine step failed: {exc}")
            self._send(CoreOutputs(self._occupancy(), failures=[failure]))
            return
        deltas = [_delta(request) for request in updated]
        self._send(CoreOutputs(self._occupancy(), deltas=deltas, step=stats))

    def _occupancy(self) -> Occupancy:
        scheduler, kv = self.engine.scheduler, self.engine.kv_cache
        return Occupancy(
            len(scheduler.running), len(scheduler.waiting), kv.num_used_blocks, kv.num_blocks
        )

    def _send(self, message: CoreOutputs) -> None:
        self.outputs.send(self._encode(message), copy=False)


def _delta(request) -> TokenDelta:
    """The token the step added to ``request`` (and how it ended, if it did)."""
    num_generated = len(request.output_token_ids)
    params = request.sampling_params
    delta = TokenDelta(
        request.request_id,
        request.output_token_ids[-1:],
        [request.schedule.depth(num_generated - 1)],
    )
    if params.logprobs is not None:
        delta.logprobs = request.output_logprobs[-1:]
    if params.prompt_logprobs is not None and num_generated == 1:
        delta.prompt_logprobs = list(request.prompt_logprobs)
    if request.status.is_finished:
        delta.finish_reason = request.finish_reason
        delta.stop_reason = request.stop_reason
        scheduled = request.first_scheduled_time
        if scheduled is not None:
            delta.queue_seconds = scheduled - request.arrival_time
    return delta
