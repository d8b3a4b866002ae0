"""HTTP endpoints on Faust's web server: ``/metrics``, ``/health``, ``/ready``.

``/health`` is liveness: the process and its event loop answer (200). ``/ready`` is readiness: 200 only
once the models are loaded and the consumer group has handed this worker its partitions, 503 before.
Both return a small JSON body; ``/metrics`` is the Prometheus text format.
"""

from __future__ import annotations

import faust
from faust.web import Request, Response, View

from pipeline.agents import WorkerState


def register_views(app: faust.App, state: WorkerState) -> None:
    """Add the three pages to ``app`` (served when ``CHATMOD_WORKER_WEB_ENABLED`` is true)."""

    @app.page("/metrics", name="chatmod_metrics")
    async def metrics(web: View, request: Request) -> Response:
        state.refresh_gauges()  # redis_available and worker_ready as of now, not as of the last batch
        return web.bytes(state.metrics.exposition(), headers={"Content-Type": state.metrics.content_type})

    @app.page("/health", name="chatmod_health")
    async def health(web: View, request: Request) -> Response:
        return web.json({"status": "ok"})

    @app.page("/ready", name="chatmod_ready")
    async def ready(web: View, request: Request) -> Response:
        body = {
            "ready": state.ready,
            "models_loaded": state.models_loaded,
            "consuming": state.consuming,
            "models": state.holder.current.refs if state.holder is not None else {},
            "redis_available": state.redis_available,
        }
        return web.json(body, status=200 if state.ready else 503)
