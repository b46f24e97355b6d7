"""The engine-core process and the two ZMQ sockets that reach it: spawn, handshake, teardown.

The core is spawned (not forked: torch and threads do not survive a fork), told where to connect
its sockets, and answers once on a pipe: its ``EngineInfo`` once the model is loaded, or why it
could not load.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import tempfile
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

import zmq

from skipdecode.config import EngineConfig
from skipdecode.core_protocol import EngineInfo
from skipdecode.engine_core import run_engine_core

logger = logging.getLogger(__name__)


@dataclass
class CoreProcess:
    """A running engine core: its process, its input (PUSH) and output (PULL) sockets."""

    process: BaseProcess
    info: EngineInfo
    context: zmq.Context
    input: zmq.Socket
    output: zmq.Socket
    folder: str  # holds the ipc:// socket files

    def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the process to exit, then kill it."""
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def close(self) -> None:
        """Close the sockets and remove their folder (the process must be gone or going)."""
        _close(self.context, self.input, self.output, self.folder)


def spawn_core(config: EngineConfig, num_threads: int, log_level: str) -> CoreProcess:
    """Spawn the core and wait until its engine is loaded; RuntimeError if it cannot load."""
    folder = tempfile.mkdtemp(prefix="skipdecode-core-")
    context = zmq.Context()
    input_socket, output_socket = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    input_socket.bind(f"ipc://{folder}/input")
    output_socket.bind(f"ipc://{folder}/output")
    mp = multiprocessing.get_context("spawn")
    receiver, sender = mp.Pipe(duplex=False)
    process = mp.Process(
        target=run_engine_core,
        args=(config, f"ipc://{folder}/input", f"ipc://{folder}/output", sender, num_threads,
              log_level),
        name="skipdecode-engine-core",
        daemon=True,
    )  # fmt: skip
    process.start()
    sender.close()
    try:
        message = receiver.recv()
    except EOFError:
        process.join(5)
        _close(context, input_socket, output_socket, folder)
        raise RuntimeError(
            f"the engine process exited while loading (code {process.exitcode})"
        ) from None
    if message[0] == "error":
        logger.error("engine process failed to load:\n%s", message[2])
        process.join(10)
        _close(context, input_socket, output_socket, folder)
        raise RuntimeError(f"the engine failed to load: {message[1]}")
    return CoreProcess(process, message[1], context, input_socket, output_socket, folder)


def _close(context: zmq.Context, input_socket, output_socket, folder: str) -> None:
    input_socket.close(linger=0)
    output_socket.close(linger=0)
    context.term()
    shutil.rmtree(folder, ignore_errors=True)
