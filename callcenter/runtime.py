"""One event loop for everything: Twisted's asyncio reactor on top of the asyncio loop.

The FastAGI server is Twisted; the HTTP API, the database engine and the IVR handlers are
asyncio. Running Twisted on `asyncioreactor` puts both on one loop and one thread, so an
AGI handler can await aiohttp or SQLAlchemy directly. A Twisted reactor is installed once
per process and stays bound to the loop it was built on, hence this guarded helper.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading

from twisted.internet.asyncioreactor import AsyncioSelectorReactor


def install_reactor(loop: asyncio.AbstractEventLoop) -> AsyncioSelectorReactor:
    """Install the asyncio reactor on `loop`, or return the one already installed there.

    Raises RuntimeError if another kind of reactor is installed, or if the asyncio reactor
    is bound to a different loop (it would never see any I/O on this one).

    When `loop` is already running (`asyncio.run`, pytest-asyncio), nobody will call
    `reactor.run()`, so the reactor is marked as started here: startup triggers fire and
    `callWhenRunning` and the thread pool work. Otherwise the caller runs it with
    `reactor.run()`, whose shutdown also stops the thread pool.
    """
    installed = sys.modules.get("twisted.internet.reactor")
    if installed is None:
        from twisted.internet import asyncioreactor

        asyncioreactor.install(loop)
        from twisted.internet import reactor as installed
    if not isinstance(installed, AsyncioSelectorReactor):
        raise RuntimeError(  # noqa: TRY004 - a process-state problem, not a bad argument
            f"a {type(installed).__name__} reactor is already installed; the AGI server needs "
            "the asyncio reactor (install it before anything imports twisted.internet.reactor)"
        )
    if installed._asyncioEventloop is not loop:
        raise RuntimeError("the asyncio reactor is already bound to a different event loop")
    if loop.is_running() and not installed._started:
        # Nobody will fire the reactor's shutdown either, so the thread pool (hostname
        # lookups) gets daemon threads, which cannot keep the interpreter from exiting.
        installed.getThreadPool().threadFactory = functools.partial(threading.Thread, daemon=True)
        installed.startRunning(installSignalHandlers=False)
    return installed
