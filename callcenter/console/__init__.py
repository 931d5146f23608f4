"""Staff console (/console/): sign-in, live work queue, transcription, screen pops, dashboard.

Imports point one way: the app factory (`callcenter.web.app`) mounts the console beside the
API; the console uses the services, the event hub (`callcenter.events`) and the shared HTTP
helpers (`callcenter.web.http`), and nothing but the factory imports the console's routes.
"""

from __future__ import annotations

from callcenter.console.routes import add_routes

__all__ = ["add_routes"]
