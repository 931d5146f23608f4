"""The Twisted reactor on the asyncio loop: one loop for Twisted, aiohttp and the database."""

from __future__ import annotations

import asyncio
import sys
from typing import Any


def install_reactor(loop: asyncio.AbstractEventLoop) -> Any:
    """Install AsyncioSelectorReactor on `loop` (idempotent); return the reactor.

    A reactor can be installed once per process; a second call with the same loop returns
    it, a call after some other reactor was installed is an error we want loud.
    """
    from twisted.internet import asyncioreactor

    existing = sys.modules.get("twisted.internet.reactor")
    if existing is not None:
        if not isinstance(existing, asyncioreactor.AsyncioSelectorReactor):
            raise RuntimeError(f"a non-asyncio Twisted reactor is already installed: {existing!r}")
        if existing._asyncioEventloop is not loop:  # noqa: SLF001
            raise RuntimeError("the asyncio reactor is installed on another event loop")
        return existing
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    return reactor
