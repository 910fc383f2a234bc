"""The front door, before any body is read: no new work while draining, the API key (failures
limited per client address), and the tenant's rate limit and in-flight cap, held until the
response (or its stream) ends.

An ASGI middleware rather than a route dependency: FastAPI parses a route's form and JSON body
before its dependencies run, so a request with a bad key would upload its whole body first.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.error_handlers import error_response
from service.api.lifecycle import Lifecycle
from service.api.routes import web
from service.errors import NotReady, ServiceError, Unauthorized

log = logging.getLogger(__name__)

# Probes need no key and count against no limit; nor do the metrics and the contract, unless the
# operator keeps them for key holders (PANDASERVE_PUBLIC_METRICS_AND_DOCS=false: the metrics show
# every tenant's traffic and cache behaviour). The web page and its assets are public too: they hold
# no data, and the API calls the page makes carry the key.
PROBES = frozenset({"/healthz", "/readyz"})
OPS = frozenset({"/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state  # the app's: its lifecycle, and the resources once the lifespan built them
        self.public = PROBES | web.PATHS | (OPS if state.settings.public_metrics_and_docs else frozenset())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        lifecycle: Lifecycle = self.state.lifecycle
        try:
            resources = getattr(self.state, "resources", None)
            if resources is None:
                raise NotReady("the service is starting")
            lifecycle.enter()
        except ServiceError as exc:
            await error_response(exc)(scope, receive, send)
            return
        # The TCP peer (uvicorn puts the forwarded client there only from proxies it trusts).
        address = (scope.get("client") or ("unknown",))[0]
        try:
            if resources.keys.enabled:
                await resources.limiter.check_address(address)  # before the key: no guessing at speed
            try:
                tenant = resources.keys.tenant(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1"))
            except Unauthorized:
                await resources.limiter.failed_auth(address)
                raise
            limited_as = tenant or "anonymous"  # auth off: one bucket for all
            slot = await resources.limiter.enter(limited_as)
        except ServiceError as exc:
            lifecycle.leave()
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["tenant"] = tenant
        try:
            await self.app(scope, receive, send)
        finally:
            try:
                await asyncio.shield(resources.limiter.leave(limited_as, slot))  # even when cancelled: no slot leaks
            except ServiceError as exc:
                # The answer is already sent: a store that fails now (Redis down, out of memory) is
                # the slot's problem, not the request's (its deadline frees it); raised, it would be an unhandled error.
                log.warning("could not return the in-flight slot of %s: %s (%r)", limited_as, exc, exc.__cause__)
            finally:
                lifecycle.leave()
