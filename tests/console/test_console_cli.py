"""`callcenter staff create` as an operator runs it: a real process, the password on stdin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from callcenter.console.auth import SignInRefused, StaffRole, StaffStore
from callcenter.db.engine import create_engine, make_sessionmaker
from callcenter.settings import ConsoleSettings, DatabaseSettings

ROOT = Path(__file__).resolve().parents[2]


def staff(database_url: str, *args: str, password: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    env["CALLCENTER_DATABASE__URL"] = database_url
    return subprocess.run([sys.executable, "-m", "callcenter", "staff", "create", *args], check=False, cwd=ROOT, env=env,
                          input=password + "\n", text=True, capture_output=True, timeout=120)


async def test_staff_create_reads_the_password_from_stdin_and_the_account_signs_in(database_url: str) -> None:
    created = staff(database_url, "--username", "WangFang", "--name", "王芳", "--role", "staff",
                    password="一个足够长的密码")
    assert created.returncode == 0, created.stderr
    assert "wangfang (王芳, staff) created" in created.stderr and created.stdout == ""

    again = staff(database_url, "--username", "wangfang", "--name", "王芳", "--role", "staff",
                  password="another-password")
    assert again.returncode == 2 and "taken" in again.stderr
    short = staff(database_url, "--username", "lijun", "--name", "李军", "--role", "shift_leader", password="short")
    assert short.returncode == 2 and "password" in short.stderr
    bad_role = staff(database_url, "--username", "lijun", "--name", "李军", "--role", "admin", password="x" * 10)
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr

    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        store = StaffStore(make_sessionmaker(engine), ConsoleSettings())
        account = await store.authenticate("wangfang", "一个足够长的密码")
        assert account.display_name == "王芳" and account.role is StaffRole.STAFF
        assert account.actor == "staff:王芳"
        with pytest.raises(SignInRefused):
            await store.authenticate("wangfang", "another-password")
    finally:
        await engine.dispose()
