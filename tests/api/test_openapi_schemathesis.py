"""Schemathesis, with all its checks, against the real service on each backend.

The OpenAPI document must say exactly what the service does: every status it answers, every
constraint it enforces. Schemathesis (run as its CLI, a real outside client over a real
socket) generates valid and invalid requests from the document and fails on any 5xx, any
undeclared status or header, any response that breaks its schema, any schema-valid request
refused with a 4xx other than 401/403/404/409, and any schema-invalid one accepted.

Bounded for two shared cores: a fixed seed, deterministic generation and a small
`max-examples`; the run takes well under a minute per backend.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from callcenter.app import build_services
from callcenter.db import migrate
from callcenter.service.tokens import Role
from callcenter.settings import Settings

MAX_EXAMPLES = int(os.environ.get("CALLCENTER_SCHEMATHESIS_EXAMPLES", "12"))


class _Server:
    """The whole app on 127.0.0.1 in a thread of its own, so a blocking client can call it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.token = ""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._stop())
        self.loop.close()

    async def _start(self) -> None:
        from callcenter.api.app import make_app

        self.services = build_services(self.settings)
        self.token = await self.services.tokens.create(Role.ADMIN, "schemathesis")
        self.runner = web.AppRunner(make_app(self.services), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        await self.runner.cleanup()
        await self.services.close()

    def __enter__(self) -> _Server:
        self.thread.start()
        self.ready.wait(60)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture
def served(settings: Settings) -> Iterator[_Server]:
    migrate.upgrade(settings.database.url)
    with _Server(settings) as server:
        yield server


def test_schemathesis_finds_nothing(served: _Server, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert st, "schemathesis is in the test extras (pip install -e '.[test]')"
    base = f"http://127.0.0.1:{served.port}"
    result = subprocess.run(
        [st, "run", f"{base}/api/v1/openapi.json", "--checks", "all", "--workers", "1",
         "--seed", "20261203", "--generation-deterministic", "--max-examples", str(MAX_EXAMPLES),
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
         "--suppress-health-check", "all", "--no-color",
         "-H", f"Authorization: Bearer {served.token}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
