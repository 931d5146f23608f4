"""Fixtures for the FastAGI tests, and how Twisted's reactor lives inside pytest-asyncio.

The problem: a Twisted reactor is installed once per process and stays bound to the
asyncio loop it was built on, while pytest-asyncio gives every test a fresh loop by
default (`asyncio_default_test_loop_scope = function`).

The approach, reusable by any test that needs Twisted:

1. Tests that touch the reactor run on pytest-asyncio's *session* loop. A test module
   says so once:  `pytestmark = pytest.mark.asyncio(loop_scope="session")`.
2. `_session_reactor` is a session-scoped async fixture on that same loop; it calls
   `callcenter.runtime.install_reactor(asyncio.get_running_loop())`, which installs the
   asyncio reactor on the first call and returns the same reactor afterwards (and marks
   it running, since pytest-asyncio, not `reactor.run()`, drives the loop).
3. Tests request `reactor`, which refuses (pytest.fail with the fix) to serve a test that
   is not on the session loop: such a test would block for ever, because its loop is not
   the one the reactor's sockets are registered with.
4. Async fixtures those tests use must also say `loop_scope="session"` (the project
   default for fixtures is a function loop), like `agi_server` below.

Other loop-per-test suites are unaffected; they simply never request `reactor`. To share
this with the whole suite, move these two fixtures to tests/conftest.py unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from structlog.testing import capture_logs
from structlog.typing import EventDict
from twisted.internet.asyncioreactor import AsyncioSelectorReactor

from callcenter.runtime import install_reactor
from tests.agi.asterisk_peer import AgiServerHarness


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def _session_reactor() -> AsyncioSelectorReactor:
    return install_reactor(asyncio.get_running_loop())


@pytest.fixture
def reactor(
    request: pytest.FixtureRequest, _session_reactor: AsyncioSelectorReactor
) -> AsyncioSelectorReactor:
    """The asyncio reactor, for tests marked `pytest.mark.asyncio(loop_scope="session")`."""
    marker = request.node.get_closest_marker("asyncio")
    if marker is None or marker.kwargs.get("loop_scope") != "session":
        pytest.fail(
            "a test that uses the Twisted reactor must run on the session event loop: add "
            '`pytestmark = pytest.mark.asyncio(loop_scope="session")` to its module',
            pytrace=False,
        )
    return _session_reactor


@pytest_asyncio.fixture(loop_scope="session")
async def agi_server(reactor: AsyncioSelectorReactor) -> AsyncIterator[AgiServerHarness]:
    """`agi_server.start(routes)` starts a server; `await agi_server.call(peer)` plays a call."""
    harness = AgiServerHarness(reactor)
    try:
        yield harness
    finally:
        await harness.stop()


@pytest.fixture
def agi_logs() -> Iterator[list[EventDict]]:
    """structlog events emitted during the test, as dicts."""
    with capture_logs() as entries:
        yield entries
