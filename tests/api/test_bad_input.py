"""Issue 9 part 2: no input gets a 5xx. Each answer is a 4xx JSON error naming the field,
on SQLite and PostgreSQL (where a NUL byte used to reach the database)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callcenter.service.tokens import Role
from tests.conftest import ApiClient

JSON = {"Content-Type": "application/json"}


async def create(api: ApiClient, **body: Any) -> dict[str, Any]:
    payload = {"description": "龙岗大道人行道井盖丢失", "reporter_phone": "13812345678", **body}
    response = await api.http.post("/api/v1/cases", json=payload, headers=api.auth(Role.STAFF))
    assert response.status == 201, await response.text()
    return await response.json()


async def expect(response: Any, statuses: tuple[int, ...], field: str | None) -> dict[str, Any]:
    text = await response.text()
    assert response.status in statuses, text
    body = await response.json(content_type=None)
    if field is not None:
        assert body.get("field") == field, body
    return body


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"description": ' + b"[" * 1000 + b"]" * 1000 + b"}", "description"),
    (b'{"description": "x", "lon": ' + b"9" * 5000 + b', "lat": 1}', "lon"),
    (b'{"description": "x", "lon": -' + b"9" * 5000 + b', "lat": 1}', "lon"),
    (b'{"description": "x", "lon": NaN, "lat": 1}', None),
    (b'{"description": "x\\u0000y"}', "description"),
    (b'{"description": "x", "address": "\\ud800"}', "address"),
    (b'{"description": "x", "note\\u0000": 1}', None),
])
async def test_hostile_json_bodies(api: ApiClient, raw: bytes, field: str | None) -> None:
    response = await api.http.post("/api/v1/cases", data=raw, headers={**api.auth(Role.STAFF), **JSON})
    await expect(response, (400, 422), field)


async def test_huge_version_and_nul_bytes_in_every_text(api: ApiClient) -> None:
    staff, platform = api.auth(Role.STAFF), api.auth(Role.PLATFORM)
    number = (await create(api))["number"]
    response = await api.http.patch(f"/api/v1/cases/{number}", data=b'{"version": ' + b"1" * 5000 + b"}",
                                    headers={**staff, **JSON})
    await expect(response, (422,), "version")
    for path, body, field in [
        (f"/api/v1/cases/{number}/reject", {"reason": "invalid", "note": "a\x00b"}, "note"),
        (f"/api/v1/cases/{number}/events", {"event_id": "e\x00", "status": "registered"}, "event_id"),
        (f"/api/v1/cases/{number}/merge", {"into": number, "note": "\x00"}, "note"),
        ("/api/v1/tasks", {"case": number, "kind": "verify", "request_id": "r\x00"}, "request_id"),
    ]:
        headers = platform if "events" in path or "tasks" in path else staff
        await expect(await api.http.post(path, json=body, headers=headers), (422,), field)
    for query, field in [("q=a%00b", "q"), ("reporter_phone=%00", "reporter_phone"), ("grid=%00", "grid")]:
        await expect(await api.http.get(f"/api/v1/cases?{query}", headers=staff), (400,), field)
    await expect(await api.http.get("/api/v1/tasks?case=%00", headers=staff), (400,), "case")
    await expect(await api.http.get("/api/v1/cases/%00", headers=staff), (400,), "number")
    listing = await (await api.http.get("/api/v1/cases", headers=staff)).json()
    assert listing["total"] == 1  # nothing half-written


@pytest.mark.parametrize("value", ["0001-01-01", "9999-12-31", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59"])
async def test_far_dates_in_every_date_parameter(api: ApiClient, value: str) -> None:
    for name in ("from", "to"):
        response = await api.http.get("/api/v1/cases", params={name: value}, headers=api.auth(Role.STAFF))
        await expect(response, (400,), name)
    for name in ("start_date", "end_date"):
        for fmt in ("json", "xml"):
            response = await api.http.get(f"/open311/v2/requests.{fmt}", params={name: value})
            assert response.status == 400, await response.text()
            assert name in await response.text()


async def test_open311_post_with_a_bogus_charset(api: ApiClient) -> None:
    response = await api.http.post(
        "/open311/v2/requests.json", data=b"service_code=C0101&description=x",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=bogus"})
    assert response.status == 400, await response.text()
    response = await api.http.post(
        "/open311/v2/requests.json", data=b"service_code=C0101&description=a%00b&api_key=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 400 and "description" in await response.text()


async def test_sms_inbound_that_can_never_be_stored_is_a_4xx_not_a_503(api: ApiClient) -> None:
    gateway = api.auth(Role.GATEWAY)
    for body, field in [({"from": "13812345678", "text": "井盖\x00丢了"}, "text"),
                        ({"from": "1381234\x00", "text": "x"}, "from"),
                        ({"from": "13812345678", "text": "x", "id": "\x00"}, "id"),
                        ({"from": "13812345678"}, "text")]:
        response = await api.http.post("/api/v1/sms/inbound", json=body, headers=gateway)
        await expect(response, (422,), field)
    response = await api.http.post(
        "/api/v1/sms/inbound", data={"from": "13812345678", "content": "a\x00b"}, headers=gateway)
    await expect(response, (422,), "content")


async def test_eight_concurrent_copies_of_one_event_all_get_the_same_200(api: ApiClient) -> None:
    staff, platform = api.auth(Role.STAFF), api.auth(Role.PLATFORM)
    number = (await create(api, category="C0101"))["number"]
    assert (await api.http.post(f"/api/v1/cases/{number}/submit", headers=staff)).status == 200
    event = {"event_id": "evt-42", "status": "registered", "platform_number": "GD-2026-1"}
    responses = await asyncio.gather(*[
        api.http.post(f"/api/v1/cases/{number}/events", json=event, headers=platform) for _ in range(8)])
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200] * 8, bodies
    assert all(b["status"] == "registered" and b["version"] == bodies[0]["version"] for b in bodies)
    case = await (await api.http.get(f"/api/v1/cases/{number}", headers=staff)).json()
    assert [e["event_id"] for e in case["log"]].count("evt-42") == 1
