"""The ASGI application `medvault serve` runs. Routes only render what the service's daemon
holds: no route computes anything another shell would need."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from medvault.service.daemon import Daemon

# Prometheus' text exposition format, as prometheus_client serves it.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def create_app(daemon: Daemon) -> FastAPI:
    """The application around a daemon: started with the server, stopped (jobs asked to end,
    within the daemon's stop timeout) when the server shuts down on SIGTERM or SIGINT."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        daemon.start()
        try:
            yield
        finally:
            # Off the event loop: stopping waits for jobs to end.
            import anyio

            await anyio.to_thread.run_sync(daemon.stop)

    app = FastAPI(
        title="medvault",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(daemon.metrics(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        health = daemon.health()
        return JSONResponse(health.as_dict(), status_code=200 if health.healthy else 503)

    return app
