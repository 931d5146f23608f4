"""`callcenter serve` as an operator runs it: the FastAGI listener is up beside HTTP, and a
scripted Asterisk completes a status call against the real process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.agi.asterisk_peer import ScriptedAsterisk
from tests.voice_calls.conftest import sounds

ROOT = Path(__file__).resolve().parents[2]


def test_serve_starts_the_agi_listener_and_answers_a_status_call(database_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    env.update({"CALLCENTER_DATABASE__URL": database_url, "CALLCENTER_AGI__PORT": "0",
                "CALLCENTER_RECORDINGS__SERVICE_DIR": str(tmp_path),
                "CALLCENTER_CONSOLE__RECORDINGS_DIR": str(tmp_path)})
    token = subprocess.run([sys.executable, "-m", "callcenter", "token", "create", "--role", "staff",
                            "--name", "ivr-test"], cwd=ROOT, env=env, text=True, capture_output=True, timeout=120)
    assert token.returncode == 0, token.stderr
    proc = subprocess.Popen([sys.executable, "-m", "callcenter", "serve", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        http = agi = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline and not (http and agi):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"address=(http://127\.0\.0\.1:\d+/)", line):
                http = match.group(1)
            if match := re.search(r"address=agi://(127\.0\.0\.1):(\d+)/", line):
                agi = match.group(1), int(match.group(2))
        assert http and agi, "no listening lines in:\n" + "".join(lines)
        assert any("service=agi" in line and "hotline" in line for line in lines)

        request = urllib.request.Request(
            http + "api/v1/cases", method="POST",
            data=json.dumps({"description": "井盖缺失", "reporter_phone": "13812345678"}).encode(),
            headers={"Authorization": f"Bearer {token.stdout.strip()}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            number = json.load(response)["number"]

        peer = ScriptedAsterisk(script="status", dtmf=f"{number}#", env={"callerid": "13812345678"})
        transcript = asyncio.run(peer.run(*agi))
        heard = sounds(transcript)
        assert heard[heard.index("status_is") + 1] == "status_draft"
        assert transcript.variables["CALLCENTER_NEXT"] == "hangup" and transcript.server_closed

        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        output = "".join(lines) + rest
        assert "stopped" in rest and "voice.call_ended" in output
        assert "13812345678" not in output  # numbers never logged in clear
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
