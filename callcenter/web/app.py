"""The app factory: one aiohttp application with the API and the console mounted side by side.

This is the only module that imports both; neither imports the other.
"""

from __future__ import annotations

from aiohttp import web

from callcenter import api, console
from callcenter.app import Services
from callcenter.web.http import error_middleware, error_response, json_response
from callcenter.web.keys import services_key


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[services_key].check_database()
    except Exception:  # noqa: BLE001 - any database failure means unhealthy
        return error_response(503, "unavailable", "database unreachable")
    return json_response({"status": "ok", "database": "ok"})


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
    app.router.add_get("/", root)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/healthz", healthz)
    api.add_routes(app)
    console.add_routes(app)
    return app
