"""Run the app under uvicorn with a graceful SIGTERM: drain, then exit 0."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from skipdecode.config import EngineConfig
from skipdecode.server.app import begin_shutdown, build_app
from skipdecode.server.config import ServerConfig

# After the in-flight requests get aborted at the deadline they end at once; this margin is
# only a backstop for uvicorn's own wait on open connections.
SHUTDOWN_MARGIN_S = 5.0


class _DrainingServer(uvicorn.Server):
    """uvicorn stops accepting connections on SIGTERM/SIGINT; we also start the app's drain."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, timeout: float) -> None:
        super().__init__(config)
        self._app = app
        self._timeout = timeout

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            begin_shutdown(self._app, self._timeout)
        super().handle_exit(sig, frame)


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    sys.exit(0)


def run_server(engine_config: EngineConfig, server_config: ServerConfig) -> int:
    """Serve until SIGTERM (or Ctrl-C); returns the process exit code."""
    logging.basicConfig(
        level=server_config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = build_app(engine_config, server_config)
    config = uvicorn.Config(
        app,
        host=server_config.host,
        port=server_config.port,
        log_level=server_config.log_level,
        timeout_graceful_shutdown=int(server_config.shutdown_timeout + SHUTDOWN_MARGIN_S),
    )
    server = _DrainingServer(config, app, server_config.shutdown_timeout)
    # uvicorn re-raises the signal it shut down for once it is done, under the handler that was
    # in place before it started: make that a clean exit, since the shutdown was orderly.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    server.run()
    return 0 if server.started else 1
