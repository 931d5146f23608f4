"""What new users of the console tripped on (issue 9, part 5), over real HTTP on SQLite and
PostgreSQL: the sign-in form keeps the user name, the entry points and the icon, the tags of
voice drafts, texts folded by flood control, duplicates among drafts nobody transcribed yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from callcenter.app import Services
from callcenter.cases.model import CaseFlag, Channel
from callcenter.service.cases import DraftInput
from sms.gateway import InboundMessage
from tests.console.conftest import Console

AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32)


async def draft(services: Services, **fields: Any) -> str:
    values: dict[str, Any] = {"channel": Channel.SMS, "description": "布吉街道井盖丢失",
                              "reporter_phone": "13812345678", **fields}
    return (await services.cases.create_draft(DraftInput(**values), actor="sms:gateway")).number


async def test_a_wrong_password_keeps_the_user_name_and_focuses_the_password(console_factory: Any) -> None:
    console: Console = await console_factory()
    page = await (await console.http.get("/console/login")).text()
    assert 'value=""' in page and 'required autofocus maxlength="64"' in page  # the name first
    wrong = await console.sign_in("wangfang", "not-the-password")
    text = await wrong.text()
    assert wrong.status == 401 and "用户名或密码错误" in text
    assert 'value="wangfang"' in text
    assert 'type="password" autocomplete="current-password" required autofocus' in text
    hostile = await console.sign_in('"><script>alert(1)</script>', "not-the-password")
    body = await hostile.text()
    assert "<script>alert" not in body and "&quot;&gt;&lt;script&gt;" in body


async def test_the_root_leads_to_the_console_and_there_is_an_icon(console_factory: Any) -> None:
    console: Console = await console_factory()
    root = await console.http.get("/", allow_redirects=False)
    assert root.status == 302 and root.headers["Location"] == "/console/"
    icon = await console.http.get("/favicon.ico", allow_redirects=False)
    assert icon.status == 301 and icon.headers["Location"] == "/console/static/favicon.svg"
    svg = await console.http.get("/console/static/favicon.svg")
    assert svg.status == 200 and svg.headers["Content-Type"].startswith("image/svg+xml")
    assert (await svg.text()).startswith("<svg")
    for page in ("/console/login", "/console/"):
        html = await (await console.http.get(page)).text()
        assert '<link rel="icon" href="/console/static/favicon.svg"' in html


async def test_ivr_reports_and_voicemails_differ_and_a_late_recording_clears_its_flag(
        console_factory: Any, services: Services) -> None:
    root = Path(services.settings.console.recordings_dir)
    (root / "ivr-1.wav").write_bytes(AUDIO)
    (root / "vm-1.wav").write_bytes(AUDIO)
    # As the voice channel files them (callcenter/voice/actions.py).
    ivr = await draft(services, channel=Channel.PHONE, description="电话反映：部件·公用设施", kind="component",
                      category_major="01", recording_ref="ivr-1.wav", flags=["needs_transcription"])
    voicemail = await draft(services, channel=Channel.PHONE, description="语音留言 30 秒", recording_ref="vm-1.wav",
                            flags=["needs_transcription", "voicemail"])
    late = await draft(services, channel=Channel.PHONE, description="电话反映：事件·市容环境", kind="event",
                       category_major="01", recording_ref="late.wav",
                       flags=["needs_transcription", CaseFlag.RECORDING_MISSING.value])
    console: Console = await (await console_factory()).signed_in("wangfang")

    async def labels() -> dict[str, tuple[str, list[str]]]:
        queue = await console.get_json("/console/api/queue")
        seen = {item["number"]: (item["channel_label"], item["flag_labels"]) for item in queue["items"]}
        for number in (ivr, voicemail, late):
            case = await console.get_json(f"/console/api/cases/{number}")
            assert (case["channel_label"], case["flag_labels"]) == seen[number]
        return seen

    seen = await labels()
    assert seen[ivr] == ("IVR录音", ["待转写"])
    assert seen[voicemail] == ("语音留言", ["待转写"])
    assert seen[late] == ("IVR录音", ["待转写", "录音缺失"])
    (root / "late.wav").write_bytes(AUDIO)  # the shared volume caught up
    seen = await labels()
    assert seen[late] == ("IVR录音", ["待转写"])
    case = await console.get_json(f"/console/api/cases/{late}")
    assert case["recording_available"] and (await console.http.get(case["recording_url"])).status == 200


async def test_every_text_folded_by_flood_control_is_on_its_case(console_factory: Any, services: Services) -> None:
    assert services.sms is not None
    limit = services.settings.sms.rate_limit
    sender = "+8613700001234"
    # Long texts: the draft's description runs full long before the storm ends.
    texts = [f"第{i:02d}条：" + "东门步行街有人乱摆摊占道经营，" * 25 for i in range(limit + 12)]
    results = [await services.sms.intake.receive(InboundMessage(sender=sender, destination="12319", text=text,
                                                                source="http")) for text in texts]
    assert [r.outcome for r in results] == ["draft"] * limit + ["folded"] * 12
    storm = results[-1].case_number
    assert storm is not None
    view = await services.cases.get(storm)
    assert CaseFlag.FLOOD_FOLDED in view.flags
    assert not all(text.strip() in view.description for text in texts[limit:])  # the description is capped

    console: Console = await (await console_factory()).signed_in("zhaomin")  # may see numbers
    case = await console.get_json(f"/console/api/cases/{storm}")
    incoming = [m for m in case["sms_thread"] if m["direction"] == "in"]
    assert [m["body"] for m in incoming] == texts[limit:]
    assert all(m["party"] == sender for m in incoming)
    assert {m["status_label"] for m in incoming} >= {"已合并到本案（短信过多）"}
    # An ordinary SMS draft shows its one text.
    first = await console.get_json(f"/console/api/cases/{results[0].case_number}")
    assert [m["body"] for m in first["sms_thread"] if m["direction"] == "in"] == [texts[0]]


async def test_duplicates_weigh_drafts_not_yet_transcribed(console_factory: Any, services: Services) -> None:
    # The draft being transcribed: a 井盖 in grid ...0102, by a caller who has called before.
    current = await draft(services, description="布吉圩社区人行道上水井盖丢失了，很危险", reporter_phone="13800000001",
                          category="C0101", grid="44030700100102")
    # An SMS nobody has transcribed yet: no category (only the suggestion), no grid, like words.
    untranscribed = await draft(services, description="布吉圩社区人行道上的自来水井盖丢失了", reporter_phone="13800000002")
    # The same caller, about something else and elsewhere.
    same_caller = await draft(services, description="垃圾没人清", reporter_phone="13800000001", category="E0103")
    # Classified, neighbouring grid: as before.
    neighbour = await draft(services, description="上水井盖缺失", reporter_phone="13800000003",
                            category="C0101", grid="44030700100101")
    # Not duplicates: other words and no grid; another category in the same grid.
    unrelated = await draft(services, description="井盖有点响", reporter_phone="13800000004")
    other = await draft(services, description="路灯不亮", reporter_phone="13800000005",
                        category="C0118", grid="44030700100102")
    assert (await services.cases.get(untranscribed)).suggested_category == "C0101"

    console: Console = await (await console_factory()).signed_in("wangfang")
    found = await console.get_json(f"/console/api/cases/{current}/duplicates")
    why = {item["number"]: item["why"] for item in found["items"]}
    assert set(why) == {untranscribed, same_caller, neighbour}, why
    assert unrelated not in why and other not in why
    assert "同一来电号码" in why[same_caller]
    assert "建议类别相同（未转写）" in why[untranscribed] and "描述相近" in why[untranscribed]
    assert why[neighbour][:2] == ["同类别", "相邻网格"]
    assert found["items"][0]["number"] == same_caller  # the same caller weighs most

    # A draft with neither category nor grid still finds its caller's other cases.
    bare = await draft(services, description="喂", reporter_phone="13800000005", flags=["needs_transcription"])
    found = await console.get_json(f"/console/api/cases/{bare}/duplicates")
    assert [item["number"] for item in found["items"]] == [other] and "needs" not in found
