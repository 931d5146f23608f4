"""The aiohttp application: routes and middlewares around the wired services."""

from __future__ import annotations

from aiohttp import web

from callcenter import console
from callcenter.api import cases, open311
from callcenter.api import sms as sms_api
from callcenter.api.http import error_response, error_middleware, json_response
from callcenter.api.keys import services_key
from callcenter.api.openapi import openapi_view
from callcenter.app import Services


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[services_key].check_database()
    except Exception:  # noqa: BLE001 - any database failure means unhealthy
        return error_response(503, "unavailable", "database unreachable")
    return json_response({"status": "ok", "database": "ok"})


def make_app(services: Services) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware], client_max_size=services.settings.http.max_body_bytes
    )
    app[services_key] = services
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/openapi.json", openapi_view)
    cases.add_routes(app)
    open311.add_routes(app)
    sms_api.add_routes(app)
    console.add_routes(app)
    return app
