"""Issue 9 part 2 in the console: hostile input gets a 4xx naming the field, never a 5xx,
on SQLite and PostgreSQL (NUL in the sign-in name used to reach the database)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.console.conftest import PASSWORD


async def test_sign_in_with_nul_or_a_bogus_charset(console_factory: Any) -> None:
    console = await console_factory()
    token = await console.login_form()
    response = await console.http.post("/console/login", data={"csrf_token": token, "username": "wang\x00fang",
                                                                 "password": PASSWORD}, allow_redirects=False)
    assert response.status == 400, await response.text()
    response = await console.http.post("/console/login", data=b"username=wangfang&password=x",
                                       headers={"Content-Type": "application/x-www-form-urlencoded; charset=bogus"},
                                       allow_redirects=False)
    assert response.status == 400, await response.text()
    assert (await console.sign_in("wangfang")).status == 303  # the account still works


@pytest.mark.parametrize("value", ["0001-01-01", "9999-12-31"])
async def test_dashboard_far_dates(console_factory: Any, value: str) -> None:
    console = await (await console_factory()).signed_in("zhaomin")
    for name in ("from", "to"):
        body = await console.get_json(f"/console/api/dashboard?{name}={value}", status=400)
        assert body["field"] == name


async def test_huge_version_nesting_and_nul_in_console_bodies(console_factory: Any) -> None:
    console = await (await console_factory()).signed_in("wangfang")
    draft = await console.send("POST", "/console/api/cases", {"description": "井盖丢失"}, status=201)
    number = draft["number"]
    for raw, field in [(b'{"version": ' + b"7" * 5000 + b"}", "version"),
                       (b'{"description": ' + b"[" * 1000 + b"]" * 1000 + b"}", "description"),
                       (b'{"description": "a\\u0000b"}', "description")]:
        response = await console.http.patch(f"/console/api/cases/{number}", data=raw,
                                            headers={**console.headers(), "Content-Type": "application/json"})
        assert 400 <= response.status < 500, await response.text()
        assert (await response.json())["field"] == field
    response = await console.http.get("/console/api/queue?x=%00", headers={"Accept": "application/json"})
    assert 400 <= response.status < 500
