"""Open311 GeoReport v2 over real HTTP, on SQLite and PostgreSQL, read the way a client reads it."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from aiohttp import ClientResponse

from callcenter.web.keys import services_key
from callcenter.app import Services
from callcenter.cases.model import Channel
from callcenter.service.tokens import Role
from tests.conftest import ApiClient

V2 = "/open311/v2"
PHONE = "13812345678"
EMAIL = "zhang.wei@example.com"
REQUEST_FIELDS = [
    "service_request_id", "status", "status_notes", "service_name", "service_code", "description",
    "agency_responsible", "service_notice", "requested_datetime", "updated_datetime", "expected_datetime",
    "address", "address_id", "zipcode", "lat", "long", "media_url",
]


def services_of(api: ApiClient) -> Services:
    return api.http.app[services_key]


async def xml_of(response: ClientResponse, status: int = 200) -> ET.Element:
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(text.encode("utf-8"))


async def json_of(response: ClientResponse, status: int = 200) -> Any:
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    return await response.json()


def xml_requests(root: ET.Element) -> list[dict[str, str]]:
    assert root.tag == "service_requests"
    return [{child.tag: child.text or "" for child in request} for request in root.findall("request")]


async def assert_error(response: ClientResponse, fmt: str, status: int, *words: str) -> str:
    """The spec's error list with the right HTTP status; returns the description."""
    if fmt == "xml":
        root = await xml_of(response, status)
        assert root.tag == "errors"
        errors = root.findall("error")
        assert len(errors) == 1 and errors[0].findtext("code") == str(status)
        description = errors[0].findtext("description") or ""
    else:
        body = await json_of(response, status)
        assert isinstance(body, list) and len(body) == 1 and body[0]["code"] == status
        description = body[0]["description"]
    for word in words:
        assert word in description, description
    return description


def form(api: ApiClient, role: Role = Role.GATEWAY, **fields: str) -> dict[str, str]:
    """What FixMyStreet's Open311 client posts, plus what we want to vary."""
    data = {
        "jurisdiction_id": "longgang.example.cn", "api_key": api.tokens[role], "service_code": "C0101",
        "lat": "22.7205", "long": "114.2468", "email": EMAIL, "first_name": "张", "last_name": "伟",
        "description": "title: 井盖丢失\n\ndetail: 龙岗大道人行道上水井盖不见了\n\nSubmitted via FixMyStreet",
        "phone": PHONE, "attribute[endangers_people]": "no",
    }
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


async def post_xml(api: ApiClient, **fields: str) -> str:
    response = await api.http.post(f"{V2}/requests.xml", data=form(api, **fields))
    root = await xml_of(response)
    number = root.findtext("request/service_request_id")
    assert number
    return number


async def all_open311_output(api: ApiClient, numbers: list[str]) -> str:
    """Every public read that could show a request, concatenated."""
    texts = []
    for path in ("requests.xml", "requests.json"):
        texts.append(await (await api.http.get(f"{V2}/{path}")).text())
        texts.append(await (await api.http.get(f"{V2}/{path}", params={"service_request_id": ",".join(numbers)})).text())
    for number in numbers:
        for fmt in ("xml", "json"):
            texts.append(await (await api.http.get(f"{V2}/requests/{number}.{fmt}")).text())
    return "\n".join(texts)


# ---- the FixMyStreet-like flow ---------------------------------------------------------


async def test_a_fixmystreet_like_client_reports_and_tracks_over_xml(api: ApiClient) -> None:
    root = await xml_of(await api.http.get(f"{V2}/services.xml", params={"jurisdiction_id": "x"}))
    services = root.findall("service")
    assert len(services) == len(services_of(api).catalogue.all())
    chosen = next(s for s in services if s.findtext("service_code") == "C0101")
    assert chosen.findtext("service_name") == "上水井盖"
    assert chosen.findtext("metadata") == "true" and chosen.findtext("type") == "realtime"
    assert "部件" in (chosen.findtext("group") or "") and "," in (chosen.findtext("keywords") or "")
    definition = await xml_of(await api.http.get(f"{V2}/services/C0101.xml"))
    assert definition.tag == "service_definition" and definition.findtext("service_code") == "C0101"
    codes = [a.findtext("code") for a in definition.findall("attributes/attribute")]
    assert codes == ["location_detail", "component_plate", "endangers_people"]

    response = await api.http.post(f"{V2}/requests.xml", data=form(
        api, **{"media_url": "https://fms.example.cn/photo/1.jpeg", "attribute[fixmystreet_id]": "77",
                "device_id": "dev-1", "account_id": "acct-9"}))
    created = await xml_of(response)
    assert created.tag == "service_requests"
    number = created.findtext("request/service_request_id")
    assert number and number in (created.findtext("request/service_notice") or "")
    assert created.find("request/account_id") is not None

    fetched = xml_requests(await xml_of(await api.http.get(f"{V2}/requests/{number}.xml")))
    assert len(fetched) == 1
    request = fetched[0]
    assert list(request) == REQUEST_FIELDS
    assert request["service_request_id"] == number and request["status"] == "open"
    assert request["service_code"] == "C0101" and request["service_name"] == "上水井盖"
    assert request["status_notes"] == "已受理" and request["agency_responsible"] == "城市管理监督指挥中心"
    assert float(request["lat"]) == 22.7205 and float(request["long"]) == 114.2468
    requested = dt.datetime.fromisoformat(request["requested_datetime"])
    assert requested.utcoffset() == dt.timedelta(hours=8)
    assert abs(requested - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert request["description"].startswith("title: 井盖丢失")
    assert request["description"].endswith("危及人身安全：否\n图片：https://fms.example.cn/photo/1.jpeg")

    view = await services_of(api).cases.get(number)
    assert view.channel == Channel.OPEN311 and view.category == "C0101" and view.status == "draft"
    assert view.reporter_phone == "+86" + PHONE and (view.lat, view.lon) == (22.7205, 114.2468)
    assert "https://fms.example.cn/photo/1.jpeg" in view.description
    assert view.log[0].actor == "open311:test-gateway"
    assert EMAIL not in repr(view) and "伟" not in repr(view)  # names and e-mail are not stored

    output = await all_open311_output(api, [number])
    assert PHONE not in output and "138 1234" not in output and EMAIL not in output


async def test_the_same_flow_over_json_with_a_staff_key(api: ApiClient) -> None:
    services = await json_of(await api.http.get(f"{V2}/services.json"))
    event = next(s for s in services if s["service_code"] == "E0103")
    assert event["metadata"] is True and event["type"] == "realtime" and event["group"].startswith("事件")
    definition = await json_of(await api.http.get(f"{V2}/services/e0103.json"))
    assert definition["service_code"] == "E0103"
    assert [a["code"] for a in definition["attributes"]] == ["location_detail", "endangers_people"]

    response = await api.http.post(f"{V2}/requests.json", data=form(
        api, Role.STAFF, service_code=event["service_code"], lat="", long="",
        address_string="龙岗区龙城街道清林路12号", description="路边堆了很多建筑垃圾"))
    created = await json_of(response)
    assert len(created) == 1 and set(created[0]) == {"service_request_id", "service_notice", "account_id"}
    number = created[0]["service_request_id"]

    fetched = await json_of(await api.http.get(f"{V2}/requests/{number}.json"))
    assert len(fetched) == 1 and list(fetched[0]) == REQUEST_FIELDS
    assert fetched[0]["address"] == "龙岗区龙城街道清林路12号"
    assert fetched[0]["lat"] is None and fetched[0]["long"] is None
    assert fetched[0]["service_name"] == "积存垃圾渣土" and fetched[0]["status"] == "open"
    view = await services_of(api).cases.get(number)
    assert view.channel == "open311" and view.category == "E0103" and view.log[0].actor == "open311:test-staff"


async def test_a_multipart_post_and_a_post_without_description_or_phone(api: ApiClient) -> None:
    import aiohttp

    body = aiohttp.FormData()
    for key, value in form(api, Role.ADMIN, description="", phone="").items():
        body.add_field(key, value)
    body.add_field("filler", "x", content_type="text/plain")  # forces multipart/form-data
    created = await json_of(await api.http.post(f"{V2}/requests.json", data=body))
    view = await services_of(api).cases.get(created[0]["service_request_id"])
    assert view.description == "上水井盖\n危及人身安全：否" and view.reporter_phone is None
    assert "短信" not in created[0]["service_notice"]


async def test_discovery_lists_both_formats(api: ApiClient) -> None:
    root = await xml_of(await api.http.get(f"{V2}/discovery.xml"))
    assert root.findtext("endpoints/endpoint/specification") == "http://wiki.open311.org/GeoReport_v2"
    assert [f.text for f in root.findall("endpoints/endpoint/formats/format")] == ["text/xml", "application/json"]
    body = await json_of(await api.http.get(f"{V2}/discovery.json"))
    assert body["endpoints"][0]["url"].endswith("/open311/v2/")


# ---- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["xml", "json"])
async def test_missing_wrong_or_unfit_api_keys_get_403(api: ApiClient, fmt: str) -> None:
    revoked = await services_of(api).tokens.create(Role.GATEWAY, "old-gateway")
    await services_of(api).tokens.revoke("old-gateway")
    for api_key, words in [(None, ("api_key",)), ("", ("api_key",)), ("cc_gateway_nope", ("invalid",)),
                           (revoked, ("invalid",)), (api.tokens[Role.PLATFORM], ("may not",))]:
        data = form(api)
        data.pop("api_key")
        if api_key is not None:
            data["api_key"] = api_key
        response = await api.http.post(f"{V2}/requests.{fmt}", data=data)
        await assert_error(response, fmt, 403, *words)
    listing = await api.http.get(f"{V2}/requests.json")
    assert await json_of(listing) == []  # nothing was created


@pytest.mark.parametrize("fmt", ["xml", "json"])
@pytest.mark.parametrize(("fields", "word"), [
    ({"service_code": ""}, "service_code"),
    ({"attribute[endangers_people]": ""}, "attribute[endangers_people]"),
    ({"attribute[endangers_people]": "maybe"}, "attribute[endangers_people]"),
    ({"attribute[location_detail]": "东" * 101}, "attribute[location_detail]"),
    ({"attribute[component_plate]": "<script>"}, "attribute[component_plate]"),
    ({"attribute[component_plate]": "4403070101000001" + "9" * 17}, "attribute[component_plate]"),
    ({"lat": "", "long": ""}, "address_string"),
    ({"long": ""}, "long"),
    ({"lat": "north"}, "lat"),
    ({"lat": "nan"}, "lat"),
    ({"lat": "91"}, "lat"),
    ({"long": "181"}, "long"),
    ({"phone": "not-a-phone"}, "phone"),
    ({"address_string": "长" * 300}, "address_string"),
    ({"media_url": "javascript:alert(1)"}, "media_url"),
])
async def test_bad_posts_get_400_naming_the_field(api: ApiClient, fmt: str, fields: dict[str, str],
                                                  word: str) -> None:
    response = await api.http.post(f"{V2}/requests.{fmt}", data=form(api, **fields))
    await assert_error(response, fmt, 400, word)
    assert await json_of(await api.http.get(f"{V2}/requests.json")) == []


async def test_a_json_body_is_not_a_form(api: ApiClient) -> None:
    response = await api.http.post(f"{V2}/requests.json", json=form(api))
    await assert_error(response, "json", 400, "x-www-form-urlencoded")
    response = await api.http.post(f"{V2}/requests.xml", data=b"api_key=\xff\xfe",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status in (400, 403)
    await assert_error(response, "xml", response.status)


async def test_an_oversized_post_gets_413_in_spec_format(api: ApiClient) -> None:
    response = await api.http.post(f"{V2}/requests.xml", data=form(api, description="长" * 200_000))
    await assert_error(response, "xml", 413)


@pytest.mark.parametrize("fmt", ["xml", "json"])
async def test_unknown_things_get_404_in_spec_format(api: ApiClient, fmt: str) -> None:
    number = await post_xml(api)
    wrong = number[:-1] + str((int(number[-1]) + 1) % 10)
    for path in [f"requests/{wrong}.{fmt}", f"requests/000000000000.{fmt}", f"requests/abc.{fmt}",
                 f"services/C9999.{fmt}", f"services/nope.{fmt}", f"nothing.{fmt}"]:
        await assert_error(await api.http.get(f"{V2}/{path}"), fmt, 404)
    # No usable suffix: the error comes in XML, the spec's primary format.
    for path in ["services.csv", f"requests/{number}.html", "requests", "../v3/services.xml"]:
        await assert_error(await api.http.get(f"{V2}/{path}"), "xml", 404)
    response = await api.http.delete(f"{V2}/requests.{fmt}")
    await assert_error(response, fmt, 405)
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}


@pytest.mark.parametrize("fmt", ["xml", "json"])
@pytest.mark.parametrize(("params", "word"), [
    ({"start_date": "yesterday"}, "start_date"),
    ({"end_date": "2026-13-01"}, "end_date"),
    ({"start_date": "2026-03-01T00:00:00Z", "end_date": "2026-02-01T00:00:00Z"}, "end_date"),
    ({"start_date": "2026-01-01", "end_date": "2026-06-01"}, "90 days"),
    ({"status": "pending"}, "status"),
    ({"service_code": "C0101,C9999"}, "service_code"),
])
async def test_bad_queries_get_400(api: ApiClient, fmt: str, params: dict[str, str], word: str) -> None:
    await assert_error(await api.http.get(f"{V2}/requests.{fmt}", params=params), fmt, 400, word)


async def test_markup_and_control_characters_come_out_escaped(api: ApiClient) -> None:
    hostile = '<script>alert("x")</script> & <b>井盖</b>\x07]]>'
    number = await post_xml(api, description=hostile, address_string="<i>清林路</i>")
    raw = await (await api.http.get(f"{V2}/requests/{number}.xml")).text()
    assert "<script>" not in raw and "&lt;script&gt;" in raw and "<i>" not in raw
    request = xml_requests(ET.fromstring(raw.encode("utf-8")))[0]
    assert request["description"] == hostile.replace("\x07", "\ufffd") + "\n危及人身安全：否"
    assert request["address"] == "<i>清林路</i>"
    body = await json_of(await api.http.get(f"{V2}/requests/{number}.json"))
    assert body[0]["description"] == hostile + "\n危及人身安全：否"  # JSON carries the text as is


# ---- listing and filters -------------------------------------------------------------------


async def staff_case(api: ApiClient, **body: Any) -> str:
    payload = {"description": "人行道井盖丢失", "reporter_phone": "13900001111", **body}
    response = await api.http.post("/api/v1/cases", json=payload, headers=api.auth(Role.STAFF))
    assert response.status == 201, await response.text()
    return str((await response.json())["number"])


async def close_via_platform(api: ApiClient, number: str) -> None:
    staff, platform = api.auth(Role.STAFF), api.auth(Role.PLATFORM)
    response = await api.http.post(f"/api/v1/cases/{number}/submit", headers=staff)
    assert response.status == 200, await response.text()
    for index, status in enumerate(["registered", "dispatched", "feedback", "closed"]):
        response = await api.http.post(f"/api/v1/cases/{number}/events", headers=platform,
                                       json={"event_id": f"e{index}", "status": status})
        assert response.status == 200, await response.text()


async def numbers_of(api: ApiClient, **params: str) -> list[str]:
    root = await xml_of(await api.http.get(f"{V2}/requests.xml", params=params))
    from_xml = [r["service_request_id"] for r in xml_requests(root)]
    from_json = [r["service_request_id"] for r in await json_of(await api.http.get(f"{V2}/requests.json",
                                                                                  params=params))]
    assert from_xml == from_json
    return from_xml


async def test_filters_by_status_code_ids_and_dates(api: ApiClient) -> None:
    services = services_of(api)
    old_moment = dt.datetime.now(dt.UTC) - dt.timedelta(days=120)
    services.cases.now = lambda: old_moment
    try:
        old = await post_xml(api, service_code="E0103")
    finally:
        services.cases.now = lambda: dt.datetime.now(dt.UTC)
    still_open = await post_xml(api)
    rejected = await post_xml(api, service_code="E0103")
    merged = await post_xml(api, description="同一个井盖，另一位市民")  # the same form again would be a retry
    closed = await staff_case(api, category="C0101", description="井盖丢失，联系电话 0755-28881234 或 139 0000 2222")
    staff = api.auth(Role.STAFF)
    response = await api.http.post(f"/api/v1/cases/{rejected}/reject", headers=staff,
                                   json={"reason": "out_of_scope", "note": "内部备注：物业范围"})
    assert response.status == 200
    response = await api.http.post(f"/api/v1/cases/{merged}/merge", headers=staff, json={"into": still_open})
    assert response.status == 200
    await close_via_platform(api, closed)
    recent = {still_open, rejected, merged, closed}

    assert set(await numbers_of(api)) == recent  # default: the last 90 days only
    assert await numbers_of(api, status="open") == [still_open]
    assert set(await numbers_of(api, status="closed")) == {rejected, merged, closed}
    assert set(await numbers_of(api, status="open,closed")) == recent
    assert set(await numbers_of(api, service_code="E0103")) == {rejected}
    assert set(await numbers_of(api, service_code="C0101", status="closed")) == {merged, closed}
    assert set(await numbers_of(api, service_code="C0101,E0103")) == recent

    ids = f"{still_open},{closed}, {old},000000000000,abc,{closed}"
    assert set(await numbers_of(api, service_request_id=ids, status="closed")) == {still_open, closed, old}

    today = dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=8))).date()
    assert await numbers_of(api, start_date="2020-01-01T00:00:00+08:00", end_date="2020-02-01T00:00:00+08:00") == []
    assert set(await numbers_of(api, start_date=today.isoformat(), end_date=today.isoformat())) == recent
    assert set(await numbers_of(api, end_date=(today - dt.timedelta(days=1)).isoformat())) == set()
    old_day = old_moment.astimezone(dt.timezone(dt.timedelta(hours=8))).date()
    assert await numbers_of(api, start_date=old_day.isoformat()) == [old]  # start_date alone: 90 days on
    start = (old_moment - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    end = (old_moment + dt.timedelta(hours=1)).isoformat()
    assert await numbers_of(api, start_date=start, end_date=end) == [old]

    rows = {r["service_request_id"]: r for r in await json_of(await api.http.get(f"{V2}/requests.json"))}
    assert rows[rejected]["status"] == "closed" and rows[rejected]["status_notes"] == "不予立案：不属于城管受理范围"
    assert "内部备注" not in str(rows)  # staff notes stay internal
    assert rows[merged]["status"] == "closed" and still_open in rows[merged]["status_notes"]
    assert rows[closed]["status"] == "closed" and rows[closed]["status_notes"] == "已结案"
    assert rows[closed]["updated_datetime"] >= rows[closed]["requested_datetime"]
    assert rows[still_open]["status"] == "open"
    # A case from another channel is listed too, with the numbers its reporter typed masked.
    assert rows[closed]["description"] == "井盖丢失，联系电话 ************* 或 *************"
    output = await all_open311_output(api, [old, *recent])
    assert PHONE not in output and "13900001111" not in output and "139 0000 2222" not in output


async def test_private_reports_keep_their_text_out_of_the_public_feed(api: ApiClient) -> None:
    secret = "我是3栋201的李女士，隔壁在楼顶违建"
    confidential = await staff_case(api, description=secret, confidential=True, category="E0101",
                                    address="清林路3号")
    anonymous = await staff_case(api, description=secret, anonymous=True, reporter_phone=None, category="E0101")
    for number in (confidential, anonymous):
        request = xml_requests(await xml_of(await api.http.get(f"{V2}/requests/{number}.xml")))[0]
        assert request["description"] == "" and request["status"] == "open"
        body = await json_of(await api.http.get(f"{V2}/requests/{number}.json"))
        assert body[0]["description"] is None
    assert secret not in await all_open311_output(api, [confidential, anonymous])


async def test_the_list_is_capped_at_1000(api: ApiClient) -> None:
    from callcenter.service.cases import DraftInput

    services = services_of(api)
    for index in range(1003):
        await services.cases.create_draft(
            DraftInput(channel=Channel.OPEN311, description=f"第{index}号", category=("C0101", "E0103")[index % 2],
                       lat=22.7, lon=114.2),
            actor="open311:bulk")
    for params in ({}, {"service_code": "C0101,E0103"}):  # one query, and one per code merged
        rows = await json_of(await api.http.get(f"{V2}/requests.json", params=params))
        assert len(rows) == 1000, params
        assert rows[0]["description"] == "第1002号" and rows[-1]["description"] == "第3号"  # newest first


# ---- conformance: service definitions, 404 on POST, unclassified drafts, retries ----------


def xml_definition(root: ET.Element) -> dict[str, Any]:
    """A service_definition read from XML into the JSON shape, typed as the spec defines."""
    attributes = []
    for element in root.findall("attributes/attribute"):
        item: dict[str, Any] = {}
        for child in element:
            if child.tag == "values":
                item["values"] = [{"key": v.findtext("key"), "name": v.findtext("name")}
                                  for v in child.findall("value")]
            elif child.tag in ("variable", "required"):
                assert child.text in ("true", "false")
                item[child.tag] = child.text == "true"
            elif child.tag == "order":
                item[child.tag] = int(child.text or "")
            else:
                item[child.tag] = child.text or None
        attributes.append(item)
    return {"service_code": root.findtext("service_code"), "attributes": attributes}


async def test_every_service_has_typed_attributes_in_both_formats(api: ApiClient) -> None:
    catalogue = services_of(api).catalogue
    listed = await json_of(await api.http.get(f"{V2}/services.json"))
    assert listed and all(service["metadata"] is True for service in listed)
    assert len(listed) == len(catalogue.all())
    root = await xml_of(await api.http.get(f"{V2}/services.xml"))
    assert {s.findtext("metadata") for s in root.findall("service")} == {"true"}

    datatypes = {"string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"}
    for code in ("C0101", "C0301", "E0103", "E0201"):
        body = await json_of(await api.http.get(f"{V2}/services/{code}.json"))
        assert body == xml_definition(await xml_of(await api.http.get(f"{V2}/services/{code}.xml")))
        attributes = body["attributes"]
        assert [a["order"] for a in attributes] == list(range(1, len(attributes) + 1))
        for attribute in attributes:
            assert set(attribute) - {"values"} == {"variable", "code", "datatype", "required",
                                                  "datatype_description", "order", "description"}
            assert attribute["variable"] is True and attribute["datatype"] in datatypes
            assert isinstance(attribute["required"], bool) and attribute["description"]
            assert ("values" in attribute) == attribute["datatype"].endswith("valuelist")
        by_code = {a["code"]: a for a in attributes}
        danger = by_code["endangers_people"]
        assert danger["required"] is True and danger["datatype"] == "singlevaluelist"
        assert [v["key"] for v in danger["values"]] == ["yes", "no"]
        assert by_code["location_detail"]["datatype"] == "string"
        assert by_code["location_detail"]["required"] is False
        # Only components (部件) carry a plate.
        assert ("component_plate" in by_code) == code.startswith("C")


async def test_attribute_answers_reach_the_case_and_the_console(api: ApiClient) -> None:
    response = await api.http.post(f"{V2}/requests.json", data=form(api, **{
        "attribute[location_detail]": "清林路与龙城大道路口东北角",
        "attribute[component_plate]": "４４０３０７０１０１０００００１",  # full-width, as typed on a phone
        "attribute[endangers_people]": "yes",
        "attribute[fixmystreet_id]": "77"}))
    number = (await json_of(response))[0]["service_request_id"]
    view = await services_of(api).cases.get(number)
    assert view.description.splitlines()[-3:] == [
        "具体位置：清林路与龙城大道路口东北角", "部件编号：4403070101000001", "危及人身安全：是，危及人身安全"]
    assert "77" not in view.description
    assert "endangers_people" in view.flags

    from callcenter.console.serialise import FLAG_LABELS
    assert FLAG_LABELS["endangers_people"] == "危及人身安全"  # type: ignore[index]

    # An event has no plate to ask about: the answer is ignored like any unknown attribute.
    response = await api.http.post(f"{V2}/requests.json", data=form(api, service_code="E0103", **{
        "attribute[component_plate]": "X1"}))
    view = await services_of(api).cases.get((await json_of(response))[0]["service_request_id"])
    assert "部件编号" not in view.description and "endangers_people" not in view.flags


@pytest.mark.parametrize("fmt", ["xml", "json"])
async def test_an_unknown_service_code_on_post_is_404(api: ApiClient, fmt: str) -> None:
    for code in ("C9999", "井盖", "E0103x"):
        response = await api.http.post(f"{V2}/requests.{fmt}", data=form(api, service_code=code))
        await assert_error(response, fmt, 404, "service_code")
    await assert_error(await api.http.post(f"{V2}/requests.{fmt}", data=form(api, service_code="")),
                       fmt, 400, "service_code")
    assert await json_of(await api.http.get(f"{V2}/requests.json")) == []


@pytest.mark.parametrize("fmt", ["xml", "json"])
async def test_drafts_without_a_category_are_not_public_until_classified(api: ApiClient, fmt: str) -> None:
    bare = await staff_case(api, description="这里有问题", reporter_phone=None)
    classified = await post_xml(api)
    assert await numbers_of(api) == [classified]
    assert await numbers_of(api, service_request_id=f"{bare},{classified}") == [classified]
    await assert_error(await api.http.get(f"{V2}/requests/{bare}.{fmt}"), fmt, 404)

    view = await services_of(api).cases.get(bare)
    response = await api.http.patch(f"/api/v1/cases/{bare}", headers=api.auth(Role.STAFF),
                                    json={"category": "E0103", "version": view.version})
    assert response.status == 200, await response.text()
    assert set(await numbers_of(api)) == {bare, classified}
    rows = await json_of(await api.http.get(f"{V2}/requests.json"))
    assert all(row["service_code"] for row in rows)


async def count_open311_cases(api: ApiClient) -> int:
    from callcenter.service.cases import CaseFilter

    page = await services_of(api).cases.search(CaseFilter(channel="open311"), limit=100)
    return page.total


@pytest.mark.parametrize("fmt", ["xml", "json"])
async def test_a_retried_post_returns_the_first_request(api: ApiClient, fmt: str) -> None:
    import asyncio

    async def post(data: dict[str, str], headers: dict[str, str] | None = None) -> str:
        response = await api.http.post(f"{V2}/requests.{fmt}", data=data, headers=headers)
        if fmt == "xml":
            return (await xml_of(response)).findtext("request/service_request_id") or ""
        return str((await json_of(response))[0]["service_request_id"])

    data = form(api)
    first = await post(data)
    assert await post(data) == first
    # Eight copies at once (a client that retries on its own timeout): still one case.
    copies = await asyncio.gather(*(post(dict(data)) for _ in range(8)))
    assert set(copies) == {first} and await count_open311_cases(api) == 1
    # Another report (other text, or another key's client) is a new case.
    other = await post(form(api, description="另一处井盖也丢了"))
    by_staff = await post(form(api, Role.STAFF))
    assert len({first, other, by_staff}) == 3

    # The window is open311.retry_window_minutes; a copy from later is a new report.
    services = services_of(api)
    window = dt.timedelta(minutes=services.settings.open311.retry_window_minutes)
    real_now = services.cases.now
    created = (await services.cases.get(first)).created_at
    try:
        services.cases.now = lambda: created + window - dt.timedelta(seconds=1)
        assert await post(data) == first  # whatever bucket boundary lay between
        services.cases.now = lambda: created + window + dt.timedelta(seconds=1)
        later = await post(data)
        assert later not in (first, other, by_staff)
    finally:
        services.cases.now = real_now

    # An Idempotency-Key names the request whatever the fields and the time.
    keyed = await post(form(api, description="钥匙一"), {"Idempotency-Key": "fms-report-41"})
    assert await post(form(api, description="重发时改了字"), {"Idempotency-Key": "fms-report-41"}) == keyed
    assert await post(form(api, description="钥匙一"), {"Idempotency-Key": "fms-report-42"}) != keyed
    response = await api.http.post(f"{V2}/requests.{fmt}", data=form(api), headers={"Idempotency-Key": "é" * 3})
    await assert_error(response, fmt, 400, "Idempotency-Key")

    # With the window at 0, only the header makes a POST idempotent.
    services.settings = services.settings.model_copy(
        update={"open311": services.settings.open311.model_copy(update={"retry_window_minutes": 0})})
    fresh = form(api, description="窗口关闭")
    assert await post(fresh) != await post(fresh)
