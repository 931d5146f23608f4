"""/api/v1 over real HTTP, on SQLite and PostgreSQL; every response checked against the OpenAPI document."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from callcenter.api.openapi import document
from callcenter.app import Services
from callcenter.cases.numbering import damm_valid
from callcenter.service.tokens import Role
from tests.conftest import ApiClient


def check(body: Any, schema_name: str) -> None:
    """Validate a real response body against the document's schema of that name."""
    doc = document()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


def test_openapi_document_is_valid() -> None:
    validate(document())


async def create(api: ApiClient, **body: Any) -> dict[str, Any]:
    payload = {"description": "龙岗大道人行道井盖丢失", "reporter_phone": "13812345678", **body}
    response = await api.http.post("/api/v1/cases", json=payload, headers=api.auth(Role.STAFF))
    assert response.status == 201, await response.text()
    data = await response.json()
    check(data, "CaseOut")
    return data


async def test_healthz_and_openapi_need_no_token(api: ApiClient) -> None:
    response = await api.http.get("/healthz")
    assert response.status == 200
    check(await response.json(), "HealthOut")
    response = await api.http.get("/api/v1/openapi.json")
    assert response.status == 200 and (await response.json())["openapi"].startswith("3.1")


async def test_healthz_says_draining_once_the_node_is_stopping(api: ApiClient, services: Services) -> None:
    services.state.draining = True  # what `serve` sets on SIGTERM (callcenter/server.py)
    response = await api.http.get("/healthz")
    assert response.status == 503
    body = await response.json()
    check(body, "HealthOut")
    assert body["status"] == "draining" and body["node"] == services.settings.node_id()


async def test_create_draft_answers_201_with_a_valid_number(api: ApiClient) -> None:
    data = await create(api)
    assert data["status"] == "draft" and damm_valid(data["number"]) and len(data["number"]) <= 12
    response = await api.http.get(f"/api/v1/cases/{data['number']}", headers=api.auth(Role.STAFF))
    fetched = await response.json()
    check(fetched, "CaseOut")
    assert fetched["log"][0]["action"] == "created" and fetched["log"][0]["actor"] == "staff:test-staff"


async def test_auth_and_roles(api: ApiClient) -> None:
    response = await api.http.post("/api/v1/cases", json={"description": "x"})
    assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    check(await response.json(), "ErrorOut")
    response = await api.http.post("/api/v1/cases", json={"description": "x"},
                                   headers={"Authorization": "Bearer nope"})
    assert response.status == 401
    response = await api.http.post("/api/v1/cases", json={"description": "x"}, headers=api.auth(Role.PLATFORM))
    assert response.status == 403 and (await response.json())["error"] == "forbidden"
    response = await api.http.post("/api/v1/cases", json={"description": "x"}, headers=api.auth(Role.GATEWAY))
    assert response.status == 403
    response = await api.http.post("/api/v1/cases", json={"description": "管理员代录"},
                                   headers=api.auth(Role.ADMIN))
    assert response.status == 201


@pytest.mark.parametrize(("body", "status", "field"), [
    ('{"description": ', 400, None),
    ("[1, 2]", 400, None),
    ('{"description": 5}', 422, "description"),
    ('{"description": "ok", "category": "C9999"}', 422, "category"),
    ('{"description": "ok", "grid": "12"}', 422, "grid"),
    ('{"description": "ok", "reporter_phone": "abc"}', 422, "reporter_phone"),
    ('{"description": "ok", "surprise": 1}', 422, "surprise"),
    ('{"description": "ok", "lon": "114"}', 422, "lon"),
    ('{"description": "ok", "anonymous": "yes"}', 422, "anonymous"),
    ('{}', 422, "description"),
])
async def test_bad_bodies_get_json_errors_naming_the_field(api: ApiClient, body: str, status: int,
                                                           field: str | None) -> None:
    response = await api.http.post("/api/v1/cases", data=body.encode(),
                                   headers={**api.auth(Role.STAFF), "Content-Type": "application/json"})
    assert response.status == status, await response.text()
    data = await response.json()
    check(data, "ErrorOut")
    if field:
        assert data["field"] == field
    listing = await (await api.http.get("/api/v1/cases", headers=api.auth(Role.STAFF))).json()
    assert listing["total"] == 0  # nothing half-written


async def test_oversized_and_non_json_bodies(api: ApiClient) -> None:
    big = b'{"description": "' + b"a" * 300_000 + b'"}'
    response = await api.http.post("/api/v1/cases", data=big,
                                   headers={**api.auth(Role.STAFF), "Content-Type": "application/json"})
    assert response.status == 413
    check(await response.json(), "ErrorOut")
    response = await api.http.post("/api/v1/cases", data="description=x",
                                   headers={**api.auth(Role.STAFF), "Content-Type": "text/plain"})
    assert response.status == 415


async def test_bad_number_in_path(api: ApiClient) -> None:
    data = await create(api)
    wrong = data["number"][:-1] + str((int(data["number"][-1]) + 3) % 10)
    response = await api.http.get(f"/api/v1/cases/{wrong}", headers=api.auth(Role.STAFF))
    # Well formed but naming no case (the document's pattern holds): 404, saying why.
    assert response.status == 404 and "check digit" in (await response.json())["message"]
    response = await api.http.get("/api/v1/cases/abc'--", headers=api.auth(Role.STAFF))
    assert response.status == 422
    response = await api.http.get("/api/v1/cases/000000000000", headers=api.auth(Role.STAFF))
    assert response.status == 404


async def test_transcribe_submit_and_platform_events_write_log_and_outbox(api: ApiClient) -> None:
    services_grid = "44030710200101"
    grids = api.http.app  # the app carries the services
    from callcenter.web.keys import services_key

    services = grids[services_key]
    services_grid = services.grids.search("街道", limit=1)[0].code.value
    data = await create(api)
    number = data["number"]
    staff = api.auth(Role.STAFF)
    response = await api.http.patch(f"/api/v1/cases/{number}", headers=staff,
                                    json={"category": "C0101", "grid": services_grid, "version": 1})
    assert response.status == 200, await response.text()
    check(await response.json(), "CaseOut")
    response = await api.http.patch(f"/api/v1/cases/{number}", headers=staff,
                                    json={"address": "x", "version": 1})
    assert response.status == 409 and (await response.json())["error"] == "conflict"
    response = await api.http.post(f"/api/v1/cases/{number}/submit", headers=staff)
    assert response.status == 200 and (await response.json())["status"] == "submitted"

    platform = api.auth(Role.PLATFORM)
    response = await api.http.post(f"/api/v1/cases/{number}/events", headers=staff,
                                   json={"event_id": "p1", "status": "registered"})
    assert response.status == 403
    response = await api.http.post(f"/api/v1/cases/{number}/events", headers=platform,
                                   json={"event_id": "p1", "status": "registered",
                                         "platform_number": "C0101202611240001"})
    assert response.status == 200, await response.text()
    body = await response.json()
    check(body, "CaseOut")
    assert body["status"] == "registered" and body["platform_number"] == "C0101202611240001"
    assert body["log"][-1]["event_id"] == "p1" and body["log"][-1]["actor"] == "platform:test-platform"

    from sqlalchemy import select

    from callcenter.db.tables import OutboxRow

    async with services.sessions() as session:
        templates = (await session.scalars(select(OutboxRow.template).order_by(OutboxRow.id))).all()
    assert templates == ["received", "registered"]

    response = await api.http.post(f"/api/v1/cases/{number}/events", headers=platform,
                                   json={"event_id": "p2", "status": "closed"})
    assert response.status == 409 and (await response.json())["error"] == "illegal_transition"
    response = await api.http.post(f"/api/v1/cases/{number}/events", headers=platform,
                                   json={"event_id": "p3", "status": "rejected"})
    assert response.status == 422 and (await response.json())["field"] == "reason"
    response = await api.http.post(f"/api/v1/cases/{number}/events", headers=platform,
                                   json={"event_id": "p4", "status": "exploded"})
    assert response.status == 422 and (await response.json())["field"] == "status"


async def test_reject_and_merge_routes(api: ApiClient) -> None:
    staff = api.auth(Role.STAFF)
    a, b, c = (await create(api))["number"], (await create(api))["number"], (await create(api))["number"]
    response = await api.http.post(f"/api/v1/cases/{a}/reject", headers=staff,
                                   json={"reason": "duplicate", "note": "同一井盖"})
    assert response.status == 200 and (await response.json())["status"] == "rejected"
    response = await api.http.post(f"/api/v1/cases/{b}/reject", headers=staff, json={"reason": "bored"})
    assert response.status == 422 and (await response.json())["field"] == "reason"
    response = await api.http.post(f"/api/v1/cases/{b}/merge", headers=staff, json={"into": c})
    body = await response.json()
    assert response.status == 200 and body["status"] == "merged" and body["master_number"] == c


async def test_list_search_and_paging(api: ApiClient) -> None:
    for i in range(5):
        await create(api, description=f"第{i}号 <b>暴露垃圾</b>", reporter_phone=None)
    staff = api.auth(Role.STAFF)
    response = await api.http.get("/api/v1/cases", params={"limit": "2", "offset": "1"}, headers=staff)
    page = await response.json()
    check(page, "CasePage")
    assert page["total"] == 5 and len(page["items"]) == 2 and page["items"][0]["log"] is None
    response = await api.http.get("/api/v1/cases", params={"q": "第3号", "status": "draft", "channel": "staff"},
                                  headers=staff)
    assert (await response.json())["total"] == 1
    response = await api.http.get("/api/v1/cases", params={"from": "2020-01-01", "to": "2020-01-02"},
                                  headers=staff)
    assert (await response.json())["total"] == 0
    for params, field in [({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"status": "nope"}, "status"),
                          ({"from": "yesterday"}, "from"), ({"grid": "abc"}, "grid")]:
        response = await api.http.get("/api/v1/cases", params=params, headers=staff)
        assert response.status in (400, 422) and (await response.json())["field"] == field, params


async def test_confidential_reporters_are_masked_for_every_role(api: ApiClient) -> None:
    """docs/privacy.md: staff tokens mask them too, as the console does."""
    data = await create(api, confidential=True)
    for role in (Role.PLATFORM, Role.STAFF, Role.ADMIN):
        response = await api.http.get(f"/api/v1/cases/{data['number']}", headers=api.auth(role))
        assert (await response.json())["reporter_phone"] == "+86138****5678", role
    public = await create(api)
    response = await api.http.get(f"/api/v1/cases/{public['number']}", headers=api.auth(Role.STAFF))
    assert (await response.json())["reporter_phone"] == "+8613812345678"


async def test_unknown_route_and_method_are_json(api: ApiClient) -> None:
    response = await api.http.get("/api/v1/nothing")
    assert response.status == 404 and (await response.json())["error"] == "not_found"
    response = await api.http.delete("/api/v1/cases", headers=api.auth(Role.STAFF))
    assert response.status == 405 and (await response.json())["error"] == "method_not_allowed"
