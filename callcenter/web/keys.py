"""Typed application keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from callcenter.app import Services

services_key: web.AppKey[Services] = web.AppKey("services")
