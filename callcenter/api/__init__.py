"""The HTTP API (/api/v1/) and Open311 GeoReport v2 (/open311/v2/), for machines with tokens."""

from __future__ import annotations

from aiohttp import web

from callcenter.api import cases, open311, openapi, sms


def add_routes(app: web.Application) -> None:
    """Mount the API's routes (the app factory calls it, after services_key is set)."""
    app.router.add_get("/api/v1/openapi.json", openapi.openapi_view)
    cases.add_routes(app)
    open311.add_routes(app)
    sms.add_routes(app)
