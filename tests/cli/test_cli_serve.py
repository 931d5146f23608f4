"""The console script as an operator runs it: real processes, real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callcenter", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=120)


def cli_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    env["CALLCENTER_DATABASE__URL"] = database_url
    env["CALLCENTER_AGI__PORT"] = "0"  # serve also opens FastAGI; never collide with another run
    return env


def test_serve_migrates_listens_answers_and_stops_on_sigterm(database_url: str) -> None:
    env = cli_env(database_url)
    token = run_cli("token", "create", "--role", "staff", "--name", "接线员01", env=env)
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    assert secret.startswith("cc_staff_") and "shown only this once" in token.stderr

    proc = subprocess.Popen([sys.executable, "-m", "callcenter", "serve", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address = None
        deadline = time.monotonic() + 60
        lines: list[str] = []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"address=(http://127\.0\.0\.1:\d+/)", line)
            if match:
                address = match.group(1)
                break
        assert address, "no listening line in:\n" + "".join(lines)
        with urllib.request.urlopen(address + "healthz", timeout=10) as response:
            health = json.load(response)
            assert health["status"] == "ok" and health["database"] == "ok" and health["nodes"] == [health["node"]]
        request = urllib.request.Request(
            address + "api/v1/cases", method="POST",
            data=json.dumps({"description": "路灯不亮", "reporter_phone": "13812345678"}).encode(),
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201 and json.load(response)["status"] == "draft"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "stopped" in rest
        assert "13812345678" not in "".join(lines) + rest  # numbers never logged in clear
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_creates_the_embedded_store_in_a_missing_directory(tmp_path: Path) -> None:
    """A fresh clone has no ./var/: the first `serve` must create it, not fail."""
    store = tmp_path / "not" / "yet" / "callcenter.db"
    env = cli_env(f"sqlite:///{store}")
    proc = subprocess.Popen([sys.executable, "-m", "callcenter", "serve", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "service=http" in line or "unusable" in line:
                break
        assert any("service=http" in line for line in lines), "".join(lines)
        assert store.is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_db_upgrade_and_current(database_url: str) -> None:
    env = cli_env(database_url)
    assert run_cli("db", "current", env=env).stdout.strip().startswith("empty")
    upgraded = run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    from callcenter.db.migrate import head_revision

    assert run_cli("db", "current", env=env).stdout.strip() == head_revision()


@pytest.mark.parametrize(("env_extra", "needle"), [
    ({"CALLCENTER_HTTP__PORT": "not-a-port"}, "CALLCENTER_HTTP__PORT"),
    ({"CALLCENTER_DATABASE__URL": "oracle://x"}, "database.url"),
])
def test_bad_settings_stop_start_up_naming_the_key(env_extra: dict[str, str], needle: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")} | env_extra
    result = run_cli("serve", env=env)
    assert result.returncode == 2 and needle in result.stderr


def test_bad_role_is_refused(tmp_path: Path) -> None:
    result = run_cli("token", "create", "--role", "root", "--name", "x",
                     env=cli_env(f"sqlite:///{tmp_path / 'x.db'}"))
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_a_first_run_is_led_to_the_console_and_told_how_to_make_an_account(tmp_path: Path) -> None:
    """What a new user sees: the log names the console and the command for the first account;
    the address it gives leads to the console's sign-in; once an account exists, no hint."""
    env = cli_env(f"sqlite:///{tmp_path / 'first.db'}")

    def start() -> tuple[subprocess.Popen[str], list[str]]:
        proc = subprocess.Popen([sys.executable, "-m", "callcenter", "serve", "--port", "0"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"\bstarted\b", line) or "failed" in line or "unusable" in line:
                break
        return proc, lines

    proc, lines = start()
    try:
        log = "".join(lines)
        base = re.search(r"service=http\S*\s.*?address=(http://127\.0\.0\.1:\d+/)|"
                         r"address=(http://127\.0\.0\.1:\d+/)\S*\s.*service=http", log)
        assert base, log
        address = base.group(1) or base.group(2)
        assert f"{address}console/" in log
        assert "console.no_accounts" in log and "scripts/callcenter staff create" in log
        opener = urllib.request.build_opener()
        with opener.open(address, timeout=10) as response:  # follows the redirects
            assert response.url.startswith(address + "console/login")
            assert "登录" in response.read().decode("utf-8")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)

    created = subprocess.run([sys.executable, "-m", "callcenter", "staff", "create", "--username", "zhaomin",
                              "--name", "赵敏", "--role", "shift_leader"], cwd=ROOT, env=env, text=True,
                             input="correct horse battery\n", capture_output=True, timeout=120)
    assert created.returncode == 0, created.stderr
    proc, lines = start()
    try:
        assert "console.no_accounts" not in "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_the_readme_commands_exist_as_written() -> None:
    """Every `scripts/…` in README.md and docs/ is an executable script, and every
    `scripts/callcenter …` in their shell blocks parses as written (optional `[…]` left out)."""
    import shlex

    from callcenter.cli import build_parser

    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    lines = [(path.name, line) for path in texts for line in path.read_text(encoding="utf-8").splitlines()]
    scripts = {m.group(1) for _, line in lines for m in re.finditer(r"(?<![\w/.])(scripts/[a-z_]+(?:-[a-z_]+)*)\b", line)}
    assert {"scripts/serve", "scripts/test", "scripts/callcenter"} <= scripts
    for script in scripts:
        assert os.access(ROOT / script, os.X_OK), script
    parsed, in_shell = 0, False
    for where, line in lines:
        if line.startswith("```"):
            in_shell = line.strip() in ("```sh", "```bash", "```console")
            continue
        if not in_shell:
            continue
        # `callcenter` alone is not on the PATH after scripts/serve: a fresh clone fails on it.
        assert not re.match(r"\s*(?:\S+ \| )?callcenter ", line), f"{where}: {line}"
        for match in re.finditer(r"scripts/callcenter ([^`#\n]*)", line):
            words = shlex.split(re.sub(r"\[[^\]]*\]", "", match.group(1)).replace("|", " "))
            if not words or words[0].startswith("<"):
                continue
            try:
                build_parser().parse_args(words)
            except SystemExit as exc:
                raise AssertionError(f"{where}: scripts/callcenter {match.group(1)}") from exc
            parsed += 1
    assert parsed >= 6
