"""HTTP delivery of inbound texts (gateways), supervisor tasks and metrics over the real app."""

from __future__ import annotations

from typing import Any

import jsonschema
from sqlalchemy import select

from callcenter.api.openapi import document
from callcenter.web.keys import services_key
from callcenter.db.tables import OutboxRow
from callcenter.service.tokens import Role
from tests.conftest import ApiClient
from tests.sms_intake.conftest import GRID_DAFEN, fail_inserts, heal_inserts

URL = "/api/v1/sms/inbound"


def check(body: Any, schema_name: str) -> None:
    doc = document()
    jsonschema.validate(body, {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]},
                        cls=jsonschema.Draft202012Validator)


async def test_a_gateway_posts_json_with_the_same_parsing_and_deduplication(api: ApiClient) -> None:
    headers = api.auth(Role.GATEWAY)
    body = {"from": "13812345678", "to": "12319", "text": "东门步行街井盖缺失，很危险。", "id": "kannel-0001",
            "gateway": "kannel"}
    first = await api.http.post(URL, json=body, headers=headers)
    assert first.status == 200, await first.text()
    data = await first.json()
    check(data, "SmsInboundOut")
    assert data["outcome"] == "draft" and not data["duplicate"] and data["message_key"] == "id:http:kannel:kannel-0001"
    again = await (await api.http.post(URL, json=body, headers=headers)).json()
    assert again["duplicate"] and again["case"] == data["case"]
    # Raw UCS-2 with a UDH, as Kannel can forward it: part 2 of 2, then part 1.
    parts = ["050003070202" + "请尽快处理".encode("utf-16-be").hex(), "050003070201" + "路灯坏了，".encode("utf-16-be").hex()]
    results = [await (await api.http.post(URL, json={"from": "13987654321", "hex": hex_, "coding": 8, "udhi": True},
                                          headers=headers)).json() for hex_ in parts]
    assert [r["outcome"] for r in results] == ["part", "draft"]
    case = await (await api.http.get(f"/api/v1/cases/{results[1]['case']}", headers=api.auth(Role.STAFF))).json()
    assert case["description"] == "路灯坏了，请尽快处理" and case["channel"] == "sms"
    query = await (await api.http.post(URL, json={"from": "13812345678", "text": f"cx {data['case']}"},
                                       headers=headers)).json()
    assert query["outcome"] == "command" and query["case"] == data["case"]


async def test_jasmin_form_post_is_acknowledged_its_way(api: ApiClient) -> None:
    form = {"id": "a1b2c3", "from": "8613812345678", "to": "12319", "coding": "8",
            "binary": "路面塌陷有大坑".encode("utf-16-be").hex(), "origin-connector": "smppc1"}
    response = await api.http.post(URL, data=form, headers=api.auth(Role.GATEWAY))
    assert response.status == 200 and await response.text() == "ACK/Jasmin"
    again = await api.http.post(URL, data=form, headers=api.auth(Role.GATEWAY))
    assert await again.text() == "ACK/Jasmin"
    listed = await (await api.http.get("/api/v1/cases?channel=sms", headers=api.auth(Role.STAFF))).json()
    assert listed["total"] == 1 and listed["items"][0]["description"] == "路面塌陷有大坑"


async def test_roles_bad_bodies_and_a_store_failure(api: ApiClient) -> None:
    body = {"from": "13812345678", "text": "桥下积水"}
    assert (await api.http.post(URL, json=body)).status == 401
    assert (await api.http.post(URL, json=body, headers=api.auth(Role.STAFF))).status == 403
    both = await api.http.post(URL, json={**body, "hex": "00"}, headers=api.auth(Role.GATEWAY))
    assert both.status == 422
    odd = await api.http.post(URL, json={"from": "1", "hex": "abc"}, headers=api.auth(Role.GATEWAY))
    assert odd.status == 422 and (await odd.json())["field"] == "hex"
    engine = api.http.server.app[services_key].engine
    await fail_inserts(engine, "sms_inbound")
    failed = await api.http.post(URL, json=body, headers=api.auth(Role.GATEWAY))
    assert failed.status == 503 and failed.headers["Retry-After"] == "5"
    await heal_inserts(engine, "sms_inbound")
    ok = await api.http.post(URL, json=body, headers=api.auth(Role.GATEWAY))
    assert ok.status == 200 and (await ok.json())["outcome"] == "draft"


async def test_tasks_over_http_and_metrics_roles(api: ApiClient) -> None:
    services = api.http.server.app[services_key]
    created = await (await api.http.post(URL, json={"from": "13812345678", "text": "大芬油画村路灯不亮"},
                                         headers=api.auth(Role.GATEWAY))).json()
    number = created["case"]
    await services.cases.update_transcription(number, {"grid": GRID_DAFEN}, actor="staff:x")
    platform = api.auth(Role.PLATFORM)
    assert (await api.http.post("/api/v1/tasks", json={"case": number, "kind": "verify"},
                                headers=api.auth(Role.STAFF))).status == 403
    bad = await api.http.post("/api/v1/tasks", json={"case": "123", "kind": "verify"}, headers=platform)
    assert bad.status == 422 and (await bad.json())["field"] == "case"
    kind = await api.http.post("/api/v1/tasks", json={"case": number, "kind": "fix"}, headers=platform)
    assert kind.status == 422
    response = await api.http.post("/api/v1/tasks", json={"case": number, "kind": "verify", "request_id": "r-1"},
                                   headers=platform)
    assert response.status == 201
    task = await response.json()
    check(task, "TaskOut")
    assert task["supervisor_name"] == "李娜" and task["kind_label"] == "核实" and task["code"].startswith("T")
    retry = await (await api.http.post("/api/v1/tasks", json={"case": number, "kind": "verify", "request_id": "r-1"},
                                       headers=platform)).json()
    assert retry["code"] == task["code"]
    listed = await api.http.get(f"/api/v1/tasks?case={number}", headers=api.auth(Role.STAFF))
    data = await listed.json()
    check(data, "TaskList")
    assert [t["code"] for t in data["items"]] == [task["code"]]
    async with services.sessions() as session:
        notices = list(await session.scalars(select(OutboxRow).where(OutboxRow.template == "task_notice")))
    assert len(notices) == 1 and notices[0].recipient == "+8613900000002"
    assert (await api.http.get("/api/v1/metrics", headers=platform)).status == 403
    metrics = await (await api.http.get("/api/v1/metrics", headers=api.auth(Role.ADMIN))).json()
    check(metrics, "MetricsOut")
    names = {m["name"]: m for m in metrics["metrics"]}
    assert names["sms_drafts_created_total"]["samples"][0]["value"] == 1
    assert names["sms_outbox_depth"]["samples"][0]["value"] == 2  # the ack and the notice, not yet sent
