"""Work done once across real `callcenter serve` processes on one throwaway PostgreSQL.

Three nodes, each with its own SMPP bind to the node-smpp SMSC and its own AMI link to the
scripted AMI peer (a real socket; the real Asterisk would add minutes and decides nothing
here: the call-back's Originate is the thing counted). The test process writes cases, tasks
and call-back requests into the store as the console and the platform would; the nodes'
leased jobs do the rest. Counted where it leaves the system: escalation SMS at the SMSC,
Originate actions at the AMI peer. Then `kill -9` of the escalation job's holder: the next
due escalation is still sent once, by another node.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from callcenter.app import Services, build_services
from callcenter.cases.lifecycle import CaseStatus
from callcenter.db import migrate
from callcenter.service.tasks import TaskKind
from callcenter.settings import CallbackSettings, load_settings
from callcenter.voice.callbacks import CallbackService
from tests.sms_intake.conftest import GRID_BUJI, ROSTER
from tests.sms_intake.test_sms_kill import query, serve_env
from tests.sms_intake.test_sms_senders import bound_sessions
from tests.support.serve_nodes import ServeProcess
from tests.support.smsc import SmscSimulator, smsc, smsc_simulator
from tests.voice_calls.ami_peer import ScriptedAmi
from tests.voice_calls.conftest import make_case

__all__ = ["smsc", "smsc_simulator"]

pytestmark = pytest.mark.postgres

LEADER_WIRE = "8613800000000"  # the roster's shift leader (值班长), as the SMSC sees the number
LEASE_SECONDS = 2.0


@pytest_asyncio.fixture
async def ami_peer() -> AsyncIterator[ScriptedAmi]:
    peer = ScriptedAmi()
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


def node_env(database_url: str, smsc: SmscSimulator, peer: ScriptedAmi, roster: Path) -> dict[str, str]:
    env = serve_env(database_url, smsc)
    env.update({
        "CALLCENTER_SMS__ROSTER_FILE": str(roster),
        "CALLCENTER_SMS__TASK_ESCALATION_MINUTES": "0.02",      # 1.2 s
        "CALLCENTER_JOBS__TASK_ESCALATION_SECONDS": "0.1",
        "CALLCENTER_NODE__JOB_LEASE_SECONDS": str(LEASE_SECONDS),
        "CALLCENTER_NODE__HEARTBEAT_SECONDS": "0.5",
        "CALLCENTER_AMI__ENABLED": "true",
        "CALLCENTER_AMI__HOST": "127.0.0.1",
        "CALLCENTER_AMI__PORT": str(peer.port),
        "CALLCENTER_AMI__USERNAME": peer.username,
        "CALLCENTER_AMI__SECRET": peer.secret,
        "CALLCENTER_AMI__RECONNECT_MIN": "0.05",
        "CALLCENTER_AMI__RECONNECT_MAX": "0.3",
        "CALLCENTER_CALLBACK__ENABLED": "true",
        "CALLCENTER_CALLBACK__HOURS_START": "00:00",
        "CALLCENTER_CALLBACK__HOURS_END": "24:00",
        "CALLCENTER_CALLBACK__POLL_SECONDS": "0.1",
    })
    return env


def writer(database_url: str, roster: Path) -> Services:
    """The test's own hands on the store (no jobs run in it): cases, tasks, call-back requests."""
    base = load_settings(environ={})
    settings = base.model_copy(update={
        "database": base.database.model_copy(update={"url": database_url}),
        "sms": base.sms.model_copy(update={"roster_file": str(roster)})})
    return build_services(settings)


def holder(database_url: str, job: str) -> str | None:
    rows = query(database_url, f"SELECT holder FROM cluster_leases WHERE name = '{job}' AND expires_at > now()")
    return rows[0][0] if rows else None


def escalated_by(nodes: dict[str, ServeProcess], task: str) -> list[str]:
    """The nodes whose log says they escalated `task` (one line per escalation)."""
    pattern = re.compile(rf"sms\.task\.escalated\b.*\btask={task}\b")
    return [name for name, node in nodes.items()
            for line in node.log_path.read_text(errors="replace").splitlines() if pattern.search(line)]


async def eventually(check, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover


async def test_escalations_and_call_backs_happen_once_across_three_nodes_and_after_a_kill(
        smsc: SmscSimulator, ami_peer: ScriptedAmi, pg_database_url: str, tmp_path: Path) -> None:
    url = pg_database_url
    roster = tmp_path / "roster.toml"
    roster.write_text(ROSTER, encoding="utf-8")
    migrate.upgrade(url)
    env = node_env(url, smsc, ami_peer, roster)
    nodes = {f"node-{n}": ServeProcess({**env, "CALLCENTER_NODE__ID": f"node-{n}"}, tmp_path / f"node-{n}.log")
             for n in range(1, 4)}
    services = writer(url, roster)
    killed: str | None = None
    try:
        await bound_sessions(smsc, list(nodes.values()), 3)
        await eventually(lambda: ami_peer.logins >= 3, "every node logged in to AMI")

        # A call-back due now (closed case, request waiting) and a task nobody will answer.
        closed = await make_case(services, "13812345678", CaseStatus.CLOSED)
        callbacks = CallbackService(services.sessions, CallbackSettings(enabled=True), ami=None)
        await callbacks.request(closed.number, by="wangfang")
        case = await make_case(services, "13812345679")
        first = await services.sms.tasks.create(  # type: ignore[union-attr]
            case_number=case.number, kind=TaskKind.CHECK, actor="platform:p", grid=GRID_BUJI)

        await eventually(lambda: ami_peer.named("Originate"), "the call-back was placed")
        await smsc.wait_for("submit_sm", count=1, timeout=30, destination_addr=LEADER_WIRE)
        # Every node ticks many times meanwhile: nothing more may come.
        await asyncio.sleep(1.5)
        (originate,) = ami_peer.named("Originate")
        assert f"CALLCENTER_CASE_NUMBER={closed.number}" in originate["Variable"]
        view = await callbacks.get(closed.number)
        assert view is not None and (view.status, view.attempts) == ("calling", 1)
        callback_holder = holder(url, "voice-callbacks")
        assert callback_holder in nodes
        assert "voice.callback_placed" in nodes[callback_holder].log_path.read_text(errors="replace")

        assert len(await smsc.events("submit_sm", destination_addr=LEADER_WIRE)) == 1
        escalators = escalated_by(nodes, first.code)
        assert len(escalators) == 1 and escalators == [holder(url, "sms-task-escalation")]
        counts = query(url, f"SELECT count(*) FROM case_log WHERE action = 'task_escalated' "
                            f"AND changes::text LIKE '%{first.code}\"%'")
        assert counts[0][0] == 1

        # The escalation job's holder dies without a word; the next due task is still sent once.
        killed = escalators[0]
        nodes[killed].kill()
        second = await services.sms.tasks.create(  # type: ignore[union-attr]
            case_number=case.number, kind=TaskKind.VERIFY, actor="platform:p", grid=GRID_BUJI)
        await smsc.wait_for("submit_sm", count=2, timeout=30, destination_addr=LEADER_WIRE)
        await asyncio.sleep(1.0)
        assert len(await smsc.events("submit_sm", destination_addr=LEADER_WIRE)) == 2
        after = escalated_by(nodes, second.code)
        assert len(after) == 1 and after[0] != killed, after
        assert holder(url, "sms-task-escalation") == after[0]
    except BaseException:
        for name, node in nodes.items():
            print(f"--- {name}\n{node.tail()}")
        raise
    finally:
        await services.close()
        for name, node in nodes.items():
            code = node.stop()
            if name != killed:
                assert code == 0, node.tail()
