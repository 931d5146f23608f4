"""Calls over several service nodes, and a node's loss, through a real Asterisk 22 running the
project's dialplan (tests/support/asterisk.py) and real `callcenter serve` processes on one
throwaway PostgreSQL.

The dialplan knows the nodes' FastAGI ports (CALLCENTER_AGI_NODES) and starts each call on
the next one in turn (the test sets the turn so it knows where a call starts). Shown here:
a node that is down is skipped; a node killed (-9) mid-IVR leaves its callers to the staff
queue with their draft, never doubled; a node killed while a caller speaks into RECORD FILE
(a report or a voicemail) leaves the take to a survivor's `recover`, which files it once; a
node asked to stop (SIGTERM) closes its FastAGI port, says `draining` on /healthz, finishes
the call it has and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select

from callcenter.app import Services, build_services
from callcenter.cases.model import Channel
from callcenter.db import migrate
from callcenter.db.tables import CaseRow, OutboxRow
from callcenter.settings import load_settings
from tests.support.asterisk import AsteriskPeer
from tests.support.asterisk_fixtures import Sounds
from tests.support.serve_nodes import ALWAYS_OPEN_HOURS

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ("Local/agent@test-agent/n", "Local/agent@test-agent")


@dataclass
class ServeNode:
    """One `callcenter serve` process; its log lines are collected by a reader thread."""

    name: str
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    http: str = ""
    agi_port: int = 0

    def output(self) -> str:
        return "".join(self.lines)

    def logged(self, event: str) -> int:
        return sum(1 for line in list(self.lines) if f" {event} " in line or line.rstrip().endswith(event))

    def healthz(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.http + "healthz", timeout=5) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)


def _read(node: ServeNode) -> None:
    assert node.process.stdout is not None
    for line in node.process.stdout:
        node.lines.append(line)


def start_node(name: str, database_url: str, recordings: Path, scratch: Path, **extra: str) -> ServeNode:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    hours = scratch / "hours.toml"
    hours.write_text(ALWAYS_OPEN_HOURS, encoding="utf-8")
    env.update({
        "CALLCENTER_DATABASE__URL": database_url, "CALLCENTER_NODE__ID": name,
        "CALLCENTER_AGI__PORT": "0", "CALLCENTER_VOICE__HOURS_FILE": str(hours),
        "CALLCENTER_RECORDINGS__ASTERISK_DIR": str(recordings),
        "CALLCENTER_RECORDINGS__SERVICE_DIR": str(recordings),
        "CALLCENTER_CONSOLE__RECORDINGS_DIR": str(recordings), **extra})
    process = subprocess.Popen([sys.executable, "-m", "callcenter", "serve", "--port", "0"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = ServeNode(name, process)
    threading.Thread(target=_read, args=(node,), daemon=True).start()
    return node


async def wait_listening(node: ServeNode, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = node.output()
        http = re.search(r"address=(http://127\.0\.0\.1:\d+/)", text)
        agi = re.search(r"address=agi://127\.0\.0\.1:(\d+)/", text)
        if http and agi and " started" in text:
            node.http, node.agi_port = http.group(1), int(agi.group(1))
            return
        if node.process.poll() is not None:
            break
        await asyncio.sleep(0.1)
    raise AssertionError(f"{node.name} did not start:\n{node.output()[-4000:]}")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nobody listens once the block ends


@dataclass
class Cluster:
    asterisk: AsteriskPeer
    services: Services  # the test's own view of the store
    speech: Sounds
    nodes: dict[str, ServeNode]

    def report(self, *after: str) -> str:
        """Welcome → 1 report → 2 event → 1 市容环境 → a key to the beep → speak → #, then `after`."""
        keys = ["w2", "d1", "w1.5", "d2", "w1.5", "d1", "w1", "d*", "w1.5",
                "p" + self.speech.path("report_streetlight"), "w0.5", "d#"]
        return "|".join([*keys, *after])

    async def drafts(self, phone: str) -> list[CaseRow]:
        async with self.services.sessions() as session:
            return list((await session.scalars(select(CaseRow).where(
                CaseRow.channel == Channel.PHONE.value, CaseRow.reporter_phone == "+86" + phone))).all())

    async def all_drafts(self) -> list[CaseRow]:
        async with self.services.sessions() as session:
            return list((await session.scalars(select(CaseRow).where(CaseRow.channel == Channel.PHONE.value))).all())

    async def outbox(self, case_id: int) -> list[OutboxRow]:
        async with self.services.sessions() as session:
            return list((await session.scalars(select(OutboxRow).where(OutboxRow.case_id == case_id))).all())

    def number_heard(self, tag: str) -> str:
        """The digits Asterisk played after the last `your_number_is` of this call."""
        played = re.findall(r"Playing 'callcenter/zh/(\w+)\.", self.asterisk.log_of(tag))
        if "your_number_is" not in played:
            return ""
        start = len(played) - played[::-1].index("your_number_is")
        digits = ""
        for prompt in played[start:]:
            if not prompt.startswith("digit_"):
                break
            digits += prompt.removeprefix("digit_")
        return digits


async def eventually(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


@contextmanager
def queue_agents(asterisk: AsteriskPeer) -> Iterator[None]:
    """Two staff phones in the queue (Local channels that answer), one per caller at a time."""
    for interface in AGENTS:
        asterisk.cli(f"queue add member {interface} to hotline-agents")
    try:
        yield
    finally:
        for interface in AGENTS:
            asterisk.cli(f"queue remove member {interface} from hotline-agents")


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest_asyncio.fixture(loop_scope="session")
async def start_cluster(pg_database_url: str, asterisk: AsteriskPeer, caller_speech: Sounds,
                        tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """`await start_cluster("node-a", "node-b", **env)`: those service nodes on one fresh
    PostgreSQL database, sharing Asterisk's recording folder; killed afterwards."""
    migrate.upgrade(pg_database_url)  # once, before the nodes race for an empty schema
    assert asterisk.recording_dir is not None
    base = load_settings(environ={})
    services = build_services(base.model_copy(update={
        "database": base.database.model_copy(update={"url": pg_database_url})}))
    nodes: dict[str, ServeNode] = {}

    async def start(*names: str, **extra: str) -> Cluster:
        assert asterisk.recording_dir is not None
        for name in names:
            scratch = tmp_path / name
            scratch.mkdir()
            nodes[name] = start_node(name, pg_database_url, asterisk.recording_dir, scratch, **extra)
        for name in names:
            await wait_listening(nodes[name])
        return Cluster(asterisk, services, caller_speech, nodes)

    try:
        yield start
        await asterisk.wait_idle(120)
    finally:
        for node in nodes.values():
            if node.process.poll() is None:
                node.process.kill()
            node.process.wait(30)
        await services.close()
        await asterisk.set_global("CALLCENTER_AGI_TURN", "0")


A, B, C = "13812340001", "13812340002", "13812340003"


async def test_a_node_that_is_down_is_skipped(start_cluster: ClusterFactory) -> None:
    cluster = await start_cluster("node-b")
    asterisk, node_b = cluster.asterisk, cluster.nodes["node-b"]
    down = closed_port()
    await asterisk.set_agi_nodes([down, node_b.agi_port], first=0)  # the call starts on the dead one
    tag = asterisk.call(cluster.report("w2.5", "d1"), callerid=A)
    await eventually(lambda: asterisk.agi_ports_tried(tag), 30, "the first call reached AGI()")
    turn = asterisk.call(cluster.report("w2.5", "d1"), callerid=B)  # round robin: starts on node-b
    await asterisk.wait_idle(150)

    assert asterisk.agi_ports_tried(tag) == [down, node_b.agi_port]
    assert asterisk.agi_ports_tried(turn) == [node_b.agi_port]
    for call, phone in ((tag, A), (turn, B)):
        (draft,) = await cluster.drafts(phone)
        assert cluster.number_heard(call) == draft.number  # served in full by node-b
        assert len(await cluster.outbox(draft.id)) == 1
        assert "service_unavailable" not in asterisk.log_of(call)
    assert node_b.logged("agi.call_started") == 2


async def test_kill_9_mid_ivr_hands_callers_to_the_queue_with_their_draft(start_cluster: ClusterFactory) -> None:
    cluster = await start_cluster("node-a", "node-b")
    asterisk, node_a, node_b = cluster.asterisk, cluster.nodes["node-a"], cluster.nodes["node-b"]
    ports = [node_a.agi_port, node_b.agi_port]
    assert asterisk.recording_dir is not None
    with queue_agents(asterisk):
        # A: files a report and is at the contact menu when node-a dies
        await asterisk.set_agi_nodes(ports, first=0)
        reporter = asterisk.call(cluster.report("w60"), callerid=A)
        await eventually(lambda: node_a.logged("voice.recording") >= 1, 60, "A recording on node-a")
        # B: on node-a too, still at the menus (nothing filed) when it dies
        await asterisk.set_agi_nodes(ports, first=0)
        listener = asterisk.call("w60", callerid=B)
        await eventually(lambda: node_a.logged("voice.call") >= 2, 30, "B's IVR on node-a")
        await eventually(lambda: cluster.drafts(A), 60, "A's draft committed")
        await asyncio.sleep(0.5)  # the draft's number goes on the channel right after the commit
        node_a.process.kill()
        node_a.process.wait(10)
        await asterisk.wait_idle(150)

    log = asterisk.log_since(0)
    (draft,) = await cluster.drafts(A)  # 0 lost, 0 doubled
    assert await cluster.drafts(B) == []
    assert len(await cluster.all_drafts()) == 1
    for tag in (reporter, listener):
        call_log = asterisk.log_of(tag)
        assert asterisk.agi_ports_tried(tag) == [node_a.agi_port], call_log[-3000:]  # never restarted
        # what docs/multi-node.md says a real Asterisk reports for a FastAGI server that died
        assert "IVR lost mid-call on node node-a (AGISTATUS=SUCCESS)" in call_log, call_log[-3000:]
        assert "Playing 'callcenter/zh/service_unavailable" in call_log
        assert "Queue(" in call_log
    assert f"AGENT_ANSWERS case={draft.number}" in log  # the person is told which draft it is
    # nothing went through the IVR again: node-b only ran `recover` for each lost call, which
    # found A's draft already named on the channel and nothing recorded for B
    for tag, case in ((reporter, draft.number), (listener, "")):
        call_log = asterisk.log_of(tag)
        assert asterisk.agi_ports_tried(tag, "recover")[-1] == node_b.agi_port, call_log[-3000:]
        assert f"Recovered on node-b: case {case}," in call_log, call_log[-3000:]
    started = [line for line in node_b.lines if " agi.call_started " in line]
    assert started and all("script=recover" in line for line in started), started
    assert node_b.logged("voice.recovered") == 0


async def test_kill_9_while_the_caller_speaks_files_the_take_once_on_a_survivor(
        start_cluster: ClusterFactory) -> None:
    cluster = await start_cluster("node-a", "node-b")
    asterisk, node_a, node_b = cluster.asterisk, cluster.nodes["node-a"], cluster.nodes["node-b"]
    recordings = asterisk.recording_dir
    assert recordings is not None
    ports = [node_a.agi_port, node_b.agi_port]

    def speech_on_disk() -> bool:  # RECORD FILE has the caller's voice coming in (> 0.5 s of it)
        return any(path.stat().st_size > 8_044 for path in recordings.glob("report-*.wav"))

    with queue_agents(asterisk):
        await asterisk.set_agi_nodes(ports, first=0)
        tag = asterisk.call(cluster.report("w60"), callerid=A)
        await eventually(lambda: node_a.logged("voice.recording") >= 1, 60, "A's take started on node-a")
        await eventually(speech_on_disk, 30, "A speaking into RECORD FILE")
        node_a.process.kill()
        node_a.process.wait(10)
        killed_at = time.time()
        await asterisk.wait_idle(150)

    call_log = asterisk.log_of(tag)
    (draft,) = await cluster.drafts(A)  # not lost, not doubled
    assert len(await cluster.all_drafts()) == 1
    # the take the caller finished after the node's death: on the volume, named by the draft
    assert draft.recording_ref is not None and draft.source_ref == f"voice:{draft.recording_ref}"
    take = recordings / draft.recording_ref
    assert take.is_file() and take.stat().st_size > 16_044, call_log[-3000:]  # > 1 s of audio
    assert take.stat().st_mtime > killed_at  # still being written after the kill
    assert (draft.kind, draft.category_major) == ("event", "01")  # the keys A pressed on node-a
    assert "needs_transcription" in draft.flags and "recording_empty" not in draft.flags
    # filed by the survivor's `recover`, never by node-a (dead before the take ended)
    assert "voice.draft_created" not in node_a.output()
    recovered = [line for line in node_b.lines if " voice.recovered " in line]
    assert len(recovered) == 1 and f"case_number={draft.number}" in recovered[0], node_b.output()[-3000:]
    assert asterisk.agi_ports_tried(tag) == [node_a.agi_port]  # the IVR was not started again
    assert asterisk.agi_ports_tried(tag, "recover")[-1] == node_b.agi_port
    assert "IVR lost mid-call on node node-a (AGISTATUS=SUCCESS)" in call_log, call_log[-3000:]
    assert f"Recovered on node-b: case {draft.number}" in call_log, call_log[-3000:]
    # then as before: the apology, the queue, a person told which draft it is
    assert "Playing 'callcenter/zh/service_unavailable" in call_log
    assert "Queue(" in call_log
    assert f"AGENT_ANSWERS case={draft.number}" in asterisk.log_since(0)


async def test_kill_9_mid_voicemail_files_the_message_on_a_survivor(start_cluster: ClusterFactory) -> None:
    cluster = await start_cluster("node-a", "node-b")
    asterisk, node_a, node_b = cluster.asterisk, cluster.nodes["node-a"], cluster.nodes["node-b"]
    recordings = asterisk.recording_dir
    assert recordings is not None
    await asterisk.set_agi_nodes([node_a.agi_port, node_b.agi_port], first=0)
    # straight into the voicemail leg (after hours / the queue gave up): a key to the beep, speak
    script = "|".join(["w1.5", "d*", "w1.5", "p" + cluster.speech.path("report_streetlight"), "w0.5", "d#", "w30"])
    tag = asterisk.call(script, callerid=B, extension="voicemail")
    await eventually(lambda: node_a.logged("voice.recording") >= 1, 60, "B's message started on node-a")
    await eventually(lambda: any(p.stat().st_size > 8_044 for p in recordings.glob("voicemail-*.wav")),
                     30, "B speaking into RECORD FILE")
    node_a.process.kill()
    node_a.process.wait(10)
    await asterisk.wait_idle(150)

    call_log = asterisk.log_of(tag)
    (message,) = await cluster.drafts(B)
    assert len(await cluster.all_drafts()) == 1
    assert "voicemail" in message.flags and message.recording_ref is not None
    assert (recordings / message.recording_ref).stat().st_size > 16_044
    assert "voice.voicemail_created" not in node_a.output()
    assert node_b.logged("voice.recovered") == 1, node_b.output()[-3000:]
    assert asterisk.agi_ports_tried(tag, "voicemail") == [node_a.agi_port]
    assert f"Voicemail recovered on node-b: case {message.number}" in call_log, call_log[-3000:]
    assert "Playing 'callcenter/zh/system_busy" in call_log  # never silence


async def test_sigterm_drains_the_call_in_progress_and_new_calls_go_elsewhere(
        start_cluster: ClusterFactory) -> None:
    cluster = await start_cluster("node-a", "node-b", CALLCENTER_VOICE__DRAIN_SECONDS="120")
    asterisk, node_a, node_b = cluster.asterisk, cluster.nodes["node-a"], cluster.nodes["node-b"]
    ports = [node_a.agi_port, node_b.agi_port]
    await asterisk.set_agi_nodes(ports, first=0)
    staying = asterisk.call(cluster.report("w2.5", "d1"), callerid=A)
    await eventually(lambda: node_a.logged("voice.recording") >= 1, 60, "A recording on node-a")
    stopping_at = time.monotonic()
    node_a.process.send_signal(signal.SIGTERM)
    await eventually(lambda: node_a.logged("voice.draining") >= 1, 10, "node-a draining")
    status, body = await asyncio.to_thread(node_a.healthz)
    assert (status, body["status"], body["node"]) == (503, "draining", "node-a")
    assert (await asyncio.to_thread(node_b.healthz))[0] == 200

    await asterisk.set_agi_nodes(ports, first=0)  # would start on node-a: its port is closed
    newcomer = asterisk.call(cluster.report("w2.5", "d1"), callerid=C)
    rest = await asyncio.to_thread(node_a.process.wait, 150)
    drained_in = time.monotonic() - stopping_at
    await asterisk.wait_idle(150)

    assert rest == 0, node_a.output()[-3000:]
    assert drained_in < 120  # it exited when its call was done, not at the deadline
    out = node_a.output()
    assert "voice.drained" in out and "voice.drain_hand_over" not in out and " stopped" in out
    # the call in progress completed on node-a: the number heard, its SMS queued, hung up by the IVR
    (kept,) = await cluster.drafts(A)
    assert asterisk.agi_ports_tried(staying) == [node_a.agi_port]
    assert cluster.number_heard(staying) == kept.number
    assert len(await cluster.outbox(kept.id)) == 1
    assert "CALLCENTER_NEXT=hangup" in asterisk.log_of(staying)
    assert "IVR lost" not in asterisk.log_of(staying)
    # the new call skipped the draining node and was served by node-b
    (new,) = await cluster.drafts(C)
    assert asterisk.agi_ports_tried(newcomer) == [node_a.agi_port, node_b.agi_port]
    assert cluster.number_heard(newcomer) == new.number
    assert node_b.logged("agi.call_started") == 1
