"""Waiting in tests for something that happens in the background (a guard, not a timing check)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def until(condition: Callable[[], Any], what: str, limit: float = 10.0, every: float = 0.02) -> Any:
    """Poll a plain or async condition until it is truthy and return it; fail naming `what`."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"never happened: {what}"
        await asyncio.sleep(every)
