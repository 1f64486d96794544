"""The gateway application: `create_app(settings)` wires the pieces; handlers only delegate.

Endpoints (`routes.py`): `POST /v1/chat/completions`, `GET /v1/models` (from a healthy replica),
`GET /health` (the gateway is alive), `GET /ready` (some replica is healthy), `GET /metrics`
(Prometheus). With API keys configured, the `/v1/*` endpoints need `Authorization: Bearer <key>`;
the operational endpoints stay open. Every error is OpenAI error JSON (`errors.py`).

The contract: `GET /openapi.json` (`openapi.py`) and `GET /docs`, Swagger UI from assets the
gateway serves itself (the `fastapi-offline` package's copy, under `/docs/static`): no CDN.
What the app owns at runtime (clients, health checks) is `gateway.py`'s lifespan.
"""

from __future__ import annotations

from importlib.metadata import version

import httpx
from fastapi import FastAPI, Security
from fastapi_offline import FastAPIOffline

from server.config import Settings
from server.errors import install_error_handler
from server.gateway import gateway_lifespan, new_pool, request_middleware
from server.media import Resolver, system_resolver
from server.openapi import add_request_models
from server.routes import api, operations, require_api_key

DOCS = "/docs"
DOCS_ASSETS = "/docs/static"
_DESCRIPTION = (
    "OpenAI-compatible chat completions in front of AIM vLLM replicas. The AIM level of a request "
    "comes from the body field `aim`, else the `X-AIM-Level` header, else the server default; "
    "`usage.aim` says what it did."
)


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver = system_resolver,
) -> FastAPI:
    """A gateway app; `transport` and `resolver` replace the network and DNS (media URLs and
    `upstream_dns`) in tests."""
    pool, metrics = new_pool(settings)
    app = FastAPIOffline(
        title="AIM gateway", version=version("aim-vllm"), description=_DESCRIPTION,
        docs_url=DOCS, redoc_url=None, static_url=DOCS_ASSETS, redirect_slashes=False,
        lifespan=gateway_lifespan(settings, pool, metrics, transport, resolver),
        middleware=request_middleware(settings, metrics),
    )  # fmt: skip
    install_error_handler(app)
    app.include_router(api, dependencies=[Security(require_api_key)] if settings.api_keys else [])
    app.include_router(operations)
    # Routes are tried in order: the API's before the docs' (which cost the chat path ~10 us)
    app.router.routes.sort(key=lambda route: getattr(route, "path", "").startswith(DOCS))
    add_request_models(app)
    return app
