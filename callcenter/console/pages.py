"""The console's pages and static files, and the reference data its pickers load
(the CJ/T 214 catalogue, CJ/T 213 grids)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from callcenter.cases.catalogue import CaseKind
from callcenter.console.auth import ConsoleSession
from callcenter.console.inputs import fail
from callcenter.console.serialise import category_json, grid_json
from callcenter.console.signin import api, page
from callcenter.console.state import ConsoleState, state_of
from callcenter.web.http import json_response

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def static_response(state: ConsoleState, name: str) -> web.Response:
    path = state.static[name]
    return web.Response(body=path.read_bytes(), content_type="text/html", charset="utf-8")


@page
async def index(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    return static_response(state_of(request), "index.html")


async def root_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/console/")


async def static_file(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    name = request.match_info["name"]
    path = state.static.get(name)
    if path is None or name.endswith(".html"):
        raise web.HTTPNotFound()
    response = web.Response(body=path.read_bytes(), content_type=STATIC_TYPES[path.suffix], charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return response



@api
async def catalogue(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    cat = state.services.catalogue
    query = request.query.get("q")
    if query is not None:
        if len(query) > 40:
            raise fail(400, "invalid", "搜索词过长", "q")
        return json_response({"items": [category_json(state, str(c.code)) for c in cat.search(query, 20)]})
    kinds = []
    for kind in CaseKind:
        majors = [{"code": m.code, "name": m.name,
                   "minors": [{"code": str(c.code), "name": c.name, "initials": c.pinyin_initials}
                              for c in cat.minors(kind, m.code)]}
                  for m in cat.majors(kind)]
        kinds.append({"kind": kind.value, "label": kind.label_zh, "majors": majors})
    return json_response({"edition": cat.edition, "kinds": kinds})


@api
async def grids(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    query = request.query.get("q", "")
    if len(query) > 40:
        raise fail(400, "invalid", "搜索词过长", "q")
    return json_response({"items": [grid_json(g) for g in state.services.grids.search(query, 20)]})

