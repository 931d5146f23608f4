"""The whole app served on 127.0.0.1 from a thread of its own, for blocking clients.

Schemathesis's CLI and the privacy property test (hypothesis drives it synchronously) talk to
the service over a real socket while pytest's own event loop stays out of the way.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from typing import Any

from aiohttp import web

from callcenter.app import Services, build_services
from callcenter.service.tokens import Role
from callcenter.settings import Settings


class ThreadedApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.tokens: dict[Role, str] = {}
        self.error: BaseException | None = None
        self.services: Services | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._stop())
        self.loop.close()

    async def _start(self) -> None:
        from callcenter.web.app import make_app

        self.services = build_services(self.settings)
        self.tokens = {role: await self.services.tokens.create(role, f"threaded-{role.value}") for role in Role}
        self.runner = web.AppRunner(make_app(self.services), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        await self.runner.cleanup()
        if self.services is not None:
            await self.services.close()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the app's loop (to use its services) and wait for the result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(self, method: str, path: str, *, role: Role | None = None, json_body: Any = None,
                data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """One blocking HTTP request: (status, body text)."""
        sent = dict(headers or {})
        if role is not None:
            sent["Authorization"] = f"Bearer {self.tokens[role]}"
        if json_body is not None:
            data = json.dumps(json_body, ensure_ascii=False).encode()
            sent["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8")

    def __enter__(self) -> ThreadedApp:
        self.thread.start()
        self.ready.wait(60)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
