"""Staff console (/console/): sign-in, live work queue, transcription, screen pops, dashboard.

`callcenter.console.hub` imports nothing of the app, so the composition root can import
ConsoleHub; the routes are imported only when the console is mounted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from callcenter.console.hub import ConsoleHub

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["ConsoleHub", "add_routes"]


def add_routes(app: web.Application) -> None:
    """Mount /console/ on the service's app (needs services_key set)."""
    from callcenter.console import routes

    routes.add_routes(app)
