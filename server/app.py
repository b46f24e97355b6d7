"""The FastAPI app: engine lifecycle, auth, and the routes (handlers live in serving_*.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

import skipdecode
from skipdecode.async_engine import AsyncEngine
from skipdecode.config import EngineConfig
from skipdecode.server.cluster import ClusterView
from skipdecode.server.config import ServerConfig
from skipdecode.server.core_client import EngineCoreClient
from skipdecode.server.engine_client import EngineClient
from skipdecode.server.errors import install_error_handlers
from skipdecode.server.metrics import Metrics
from skipdecode.server.middleware import APIKeyMiddleware, BodySizeLimitMiddleware
from skipdecode.server.openapi import install_openapi, responses
from skipdecode.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from skipdecode.server.responses import (
    ChatCompletionResponse,
    CompletionResponse,
    DetokenizeResponse,
    HealthResponse,
    ModelList,
    StatsResponse,
    TokenizeResponse,
    VersionResponse,
)
from skipdecode.server.serving_chat import create_chat_completion
from skipdecode.server.serving_completions import create_completion
from skipdecode.server.serving_tokens import detokenize, tokenize

logger = logging.getLogger(__name__)


ClusterFactory = Callable[[Metrics, EngineClient], ClusterView]


def build_app(
    engine_config: EngineConfig,
    server_config: ServerConfig,
    cluster: ClusterFactory | None = None,
) -> FastAPI:
    """The app; its lifespan loads the model, starts the engine thread and stops it again.

    ``cluster``: under a replica runtime, builds the view of all replicas that ``/metrics`` and
    ``/internal/stats`` report (one app per replica; see ``server/ray_serve.py``).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics(server_config.model_name)  # its own registry: one per app
        async_engine = await _start_engine(engine_config, server_config, metrics)
        engine = async_engine.engine
        app.state.client = EngineClient(async_engine, server_config)
        app.state.metrics = metrics
        app.state.loop = asyncio.get_running_loop()
        app.state.cluster = None if cluster is None else cluster(metrics, app.state.client)
        logger.info("serving %s (%d layers)", server_config.model_name, engine.num_layers)
        try:
            yield
        finally:
            if app.state.cluster is not None:
                await app.state.cluster.close()
            app.state.client.abort_all()
            await asyncio.to_thread(async_engine.shutdown)

    app = FastAPI(title="skipdecode", version=skipdecode.__version__, lifespan=lifespan)
    app.state.server_config = server_config
    install_error_handlers(app)
    app.include_router(_open_routes())
    app.include_router(_api_routes(server_config))
    install_openapi(app, server_config)
    # The last added runs first: the key is checked before a body is read.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=server_config.max_request_bytes)
    if server_config.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=server_config.api_key)
    return app


async def _start_engine(
    engine_config: EngineConfig, server_config: ServerConfig, metrics: Metrics
) -> AsyncEngine | EngineCoreClient:
    """The engine in its own process (``server_config.engine_process``), or on a thread here."""
    loggers = {"step_loggers": [metrics.observe_step], "request_loggers": [metrics.observe_request]}
    if server_config.engine_process:
        core = EngineCoreClient(
            engine_config,
            max_queue_len=server_config.max_queue_len,
            num_threads=server_config.engine_threads,
            log_level=server_config.log_level,
            **loggers,
        )
        await asyncio.to_thread(core.start, asyncio.get_running_loop())
        metrics.watch_engine_process(core.engine.pid)
        return core
    from skipdecode.engine import Engine  # torch: imported when the server starts

    engine = await asyncio.to_thread(Engine, engine_config)
    async_engine = AsyncEngine(engine, max_queue_len=server_config.max_queue_len, **loggers)
    async_engine.start()
    return async_engine


def begin_shutdown(app: FastAPI, timeout: float) -> None:
    """Start draining (safe to call from a signal handler on the event loop's thread)."""
    client, loop = getattr(app.state, "client", None), getattr(app.state, "loop", None)
    if client is not None and loop is not None:
        loop.call_soon_threadsafe(client.begin_drain, timeout)


def get_client(request: Request) -> EngineClient:
    return request.app.state.client


Client = Annotated[EngineClient, Depends(get_client)]


def _open_routes() -> APIRouter:
    router = APIRouter()

    @router.get("/health", responses=responses(HealthResponse, 503))
    async def health(client: Client) -> Response:
        client.check_ready()
        return JSONResponse({"status": "ok"})

    @router.get("/version", response_model=None, responses=responses(VersionResponse))
    async def version() -> dict:
        return {"version": skipdecode.__version__}

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        cluster = getattr(request.app.state, "cluster", None)
        if cluster is not None:
            body, content_type = await cluster.render_metrics()
        else:
            body, content_type = request.app.state.metrics.render()
        return Response(body, headers={"Content-Type": content_type})

    return router


def _api_routes(config: ServerConfig) -> APIRouter:
    router = APIRouter()
    created = int(time.time())  # when the app was built: the models' "created"

    @router.get("/v1/models", response_model=None, responses=responses(ModelList))
    async def models(client: Client) -> dict:
        cards = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "skipdecode",
                "max_model_len": client.max_model_len,
                "num_layers": client.num_layers,
            }
            for name in config.served_model_names
        ]
        return {"object": "list", "data": cards}

    @router.post(
        "/v1/completions",
        responses=responses(CompletionResponse, 400, 404, 413, 500, 503, stream=True),
    )
    async def completions(body: CompletionRequest, request: Request, client: Client) -> Response:
        return await create_completion(client, body, request)

    @router.post(
        "/v1/chat/completions",
        responses=responses(ChatCompletionResponse, 400, 404, 413, 500, 503, stream=True),
    )
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, client: Client
    ) -> Response:
        return await create_chat_completion(client, body, request)

    @router.post(
        "/tokenize", response_model=None, responses=responses(TokenizeResponse, 400, 404, 413)
    )
    async def tokenize_route(body: TokenizeRequest, client: Client) -> dict:
        return await tokenize(client, body)

    @router.post(
        "/detokenize", response_model=None, responses=responses(DetokenizeResponse, 400, 404, 413)
    )
    async def detokenize_route(body: DetokenizeRequest, client: Client) -> dict:
        return detokenize(client, body)

    @router.get("/internal/stats", response_model=None, responses=responses(StatsResponse))
    async def internal_stats(request: Request, client: Client) -> dict:
        stats: dict = client.stats()
        cluster = getattr(request.app.state, "cluster", None)
        if cluster is not None:
            stats["replicas"] = await cluster.replica_stats()
        return stats

    return router
