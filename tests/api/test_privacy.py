"""docs/privacy.md as properties: generated spellings of Chinese numbers driven through every
output (API, Open311 JSON and XML, the case log, log lines) for every role.

The API and Open311 run for real (a threaded server on 127.0.0.1, a blocking client), on
SQLite and PostgreSQL; hypothesis draws the numbers, how they are written, where they sit in
the text and whether the reporter asked for anonymity or confidentiality.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callcenter.db import migrate
from callcenter.logs import _MaskingFilter, configure_logging
from callcenter.privacy import changes_for, mask_numbers_in_text, may_see_number, phone_for, text_for
from callcenter.service.tokens import Role
from callcenter.settings import LoggingSettings, Settings
from tests.support.phone_spellings import Spelled, leaks, spellings, texts_with
from tests.support.threaded_app import ThreadedApp

QUICK = settings(max_examples=400, derandomize=True, deadline=None)
E2E = settings(max_examples=12, derandomize=True, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---- the masking functions, on many spellings ---------------------------------------------------


@QUICK
@given(st.data())
def test_every_spelling_in_text_is_masked(data: st.DataObject) -> None:
    spelled = data.draw(spellings())
    text = data.draw(texts_with(spelled))
    assert leaks(text, spelled.national)  # the detector sees it before masking
    for whole in (False, True):
        masked = mask_numbers_in_text(text, whole=whole)
        assert not leaks(masked, spelled.national), (text, masked)
    assert text_for(text, True) == text  # a reader who may see it sees it as typed
    assert not leaks(text_for(text, False) or "", spelled.national)


@QUICK
@given(spellings(), spellings())
def test_case_log_changes_are_masked_for_readers_who_may_not_see(a: Spelled, b: Spelled) -> None:
    changes = {"reporter_phone": {"from": a.e164, "to": b.e164},
               "description": {"from": f"电话{a.text}", "to": f"改为{b.text}"}}
    out = json.dumps(changes_for(changes, False), ensure_ascii=False)
    assert not leaks(out, a.national) and not leaks(out, b.national), out


@QUICK
@given(spellings())
def test_log_lines_mask_numbers_in_every_field(spelled: Spelled) -> None:
    old = structlog.get_config()
    buffer = io.StringIO()
    stderr = sys.stderr
    try:
        sys.stderr = buffer
        configure_logging(LoggingSettings(level="INFO", format="json", privacy=True))
        log = structlog.get_logger("privacy-test")
        log.info("test.event", caller=spelled.text, note=f"来电{spelled.text}反映", case_number="261124000421")
        try:
            raise ValueError(f"bad caller id {spelled.text}")
        except ValueError:
            log.exception("test.failure")
    finally:
        sys.stderr = stderr
        structlog.configure(**old)
    output = buffer.getvalue()
    assert "261124000421" in output  # intake numbers are not phone numbers
    assert not leaks(output, spelled.national), output
    record = logging.LogRecord("smpplib", logging.INFO, __file__, 1, "deliver_sm from %s", (spelled.text,), None)
    _MaskingFilter().filter(record)
    assert not leaks(record.getMessage(), spelled.national)


def test_the_policy_table() -> None:
    class Case:
        def __init__(self, anonymous: bool, confidential: bool) -> None:
            self.anonymous, self.confidential = anonymous, confidential

    assert may_see_number(True, Case(False, False))
    assert not may_see_number(True, Case(True, False)) and not may_see_number(True, Case(False, True))
    assert not may_see_number(False, Case(False, False))
    assert phone_for("+8613912345678", False) == "+86139****5678" and phone_for(None, False) is None


# ---- every output of the running service, every role --------------------------------------------


@pytest.fixture
def served(settings: Settings) -> Iterator[ThreadedApp]:
    migrate.upgrade(settings.database.url)
    with ThreadedApp(settings) as server:
        yield server


def _json(served: ThreadedApp, method: str, path: str, role: Role | None = None,
          body: Any = None) -> tuple[int, Any, str]:
    status, text = served.request(method, path, role=role, json_body=body)
    return status, (json.loads(text) if text.startswith(("{", "[")) else None), text


@E2E
@given(first=spellings(), second=spellings(), typed=spellings(), privacy=st.sampled_from(["public", "anonymous",
                                                                                         "confidential"]),
       data=st.data())
def test_no_output_gives_a_number_to_a_reader_who_may_not_see_it(
        served: ThreadedApp, first: Spelled, second: Spelled, typed: Spelled, privacy: str,
        data: st.DataObject) -> None:
    description = data.draw(texts_with(typed))
    status, case, text = _json(served, "POST", "/api/v1/cases", Role.STAFF, {
        "description": description, "category": "C0101",  # Open311 lists only categorised requests
        "reporter_phone": first.api_form, "anonymous": privacy == "anonymous",
        "confidential": privacy == "confidential", "address": f"人民路1号，业主电话{typed.text}"})
    assert status == 201, (first, text)
    number = case["number"]
    status, _, text = _json(served, "PATCH", f"/api/v1/cases/{number}", Role.STAFF,
                            {"reporter_phone": second.api_form})
    assert status == 200, (second, text)
    status, _, text = _json(served, "POST", f"/api/v1/cases/{number}/reject", Role.STAFF,
                            {"reason": "invalid", "note": f"已回电{second.text}"})
    assert status == 200, text
    private = privacy != "public"
    numbers = [first.national, second.national, typed.national]

    for role in (Role.STAFF, Role.PLATFORM, Role.ADMIN):
        _, one, text = _json(served, "GET", f"/api/v1/cases/{number}", role)
        # The case log never holds a reporter's number in full, whoever reads it.
        log_text = json.dumps([entry["changes"] for entry in one["log"]], ensure_ascii=False)
        assert not leaks(log_text, first.national) and not leaks(log_text, second.national), log_text
        if private:
            for national in numbers:
                assert not leaks(text, national), (role, privacy, text)
        else:  # every API role may see a public reporter's number
            assert one["reporter_phone"] == second.e164
        # Searching by a number never finds a private reporter's case.
        _, page, _ = _json(served, "GET", f"/api/v1/cases?reporter_phone={second.api_form}", role)
        found = {item["number"] for item in page["items"]}
        assert (number in found) is not private
        _, page, _ = _json(served, "GET", f"/api/v1/cases?q={typed.national}", role)
        if private:
            assert number not in {item["number"] for item in page["items"]}

    # The public (Open311) never sees a number, in either format.
    for fmt in ("json", "xml"):
        status, text = served.request("GET", f"/open311/v2/requests/{number}.{fmt}")
        assert status == 200, text
        for national in numbers:
            assert not leaks(text, national), (fmt, text)
