"""SMPP test wiring: the asyncio reactor on the session loop, the SMSC simulator.

Twisted's reactor can be installed once per process and stays bound to one
loop, so every test that talks to Twisted runs on pytest-asyncio's session
loop (`pytest.mark.asyncio(loop_scope="session")`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from callcenter.runtime import install_reactor
from tests.support.smsc import smsc, smsc_simulator

__all__ = ["reactor", "smsc", "smsc_simulator"]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def reactor() -> AsyncIterator[Any]:
    """Twisted's asyncio reactor, installed on the session loop.

    A hostname lookup (HostnameEndpoint) starts Twisted's thread pool, whose
    non-daemon threads would keep the interpreter from exiting after the run,
    because nobody fires the reactor's shutdown here. Stop it at teardown.
    """
    installed = install_reactor(asyncio.get_running_loop())
    yield installed
    if installed.threadpool is not None:
        installed.threadpool.stop()
