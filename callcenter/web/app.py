"""The app factory: one aiohttp application with the API and the console mounted side by side.

This is the only module that imports both; neither imports the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from callcenter import api, console
from callcenter.app import Services
from callcenter.web.http import error_middleware, error_response, json_response
from callcenter.web.keys import services_key


async def healthz(request: web.Request) -> web.Response:
    """Liveness, this node's id and the live nodes on the store (their heartbeat rows).

    A node that is shutting down answers 503 with status `draining`: it still serves what it
    has (calls in progress, open consoles) but should get nothing new."""
    services = request.app[services_key]
    try:
        if services.cluster is None:
            await services.check_database()
            node, nodes = services.settings.node_id(), []
        else:
            node, nodes = services.cluster.node_id, [n.node_id for n in await services.cluster.nodes.live_nodes()]
    except Exception:  # noqa: BLE001 - any database failure means unhealthy
        return error_response(503, "unavailable", "database unreachable")
    if services.state.draining:
        return json_response({"status": "draining", "database": "ok", "node": node, "nodes": nodes}, 503)
    return json_response({"status": "ok", "database": "ok", "node": node, "nodes": nodes})


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    """The node's heartbeat, event bus and leased jobs live as long as the app."""
    cluster = app[services_key].cluster
    if cluster is None:
        yield
        return
    await cluster.start()
    yield
    await cluster.stop()


async def root(request: web.Request) -> web.Response:
    """People open the address the start-up log gives; the console is what they want."""
    raise web.HTTPFound("/console/")


async def favicon(request: web.Request) -> web.Response:
    """Browsers ask for /favicon.ico on their own; the icon is the console's."""
    raise web.HTTPMovedPermanently("/console/static/favicon.svg")


def make_app(services: Services) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware], client_max_size=services.settings.http.max_body_bytes
    )
    app[services_key] = services
    app.cleanup_ctx.append(_cluster)
    app.router.add_get("/", root)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/healthz", healthz)
    api.add_routes(app)
    console.add_routes(app)
    return app
