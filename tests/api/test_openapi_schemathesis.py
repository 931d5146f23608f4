"""Schemathesis, with all its checks, against the real service on each backend.

The OpenAPI document must say exactly what the service does: every status it answers, every
constraint it enforces. Schemathesis (run as its CLI, a real outside client over a real
socket) generates valid and invalid requests from the document and fails on any 5xx, any
undeclared status or header, any response that breaks its schema, any schema-valid request
refused with a 4xx other than 401/403/404/409, and any schema-invalid one accepted.

Bounded for two shared cores: a fixed seed, deterministic generation and a small
`max-examples`; the run takes well under a minute per backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from callcenter.db import migrate
from callcenter.service.tokens import Role
from callcenter.settings import Settings
from tests.support.threaded_app import ThreadedApp

MAX_EXAMPLES = int(os.environ.get("CALLCENTER_SCHEMATHESIS_EXAMPLES", "12"))


@pytest.fixture
def served(settings: Settings) -> Iterator[ThreadedApp]:
    migrate.upgrade(settings.database.url)
    with ThreadedApp(settings) as server:
        yield server


def test_schemathesis_finds_nothing(served: ThreadedApp, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert st, "schemathesis is in the test extras (pip install -e '.[test]')"
    base = f"http://127.0.0.1:{served.port}"
    result = subprocess.run(
        [st, "run", f"{base}/api/v1/openapi.json", "--checks", "all", "--workers", "1",
         "--seed", "20261203", "--generation-deterministic", "--max-examples", str(MAX_EXAMPLES),
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
         "--suppress-health-check", "all", "--no-color",
         "-H", f"Authorization: Bearer {served.tokens[Role.ADMIN]}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
