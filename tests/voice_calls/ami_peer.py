"""A scripted Asterisk Manager Interface on a real socket (127.0.0.1:0), for the AMI client.

AMI is a line protocol: a banner line `Asterisk Call Manager/<version>`, then blocks of
`Key: Value` lines ending in a blank line, CRLF throughout; an action's answer echoes its
ActionID. The replies below follow Asterisk 22's manager.c and app_queue.c (QueueStatus
answers with a list: `Queue status will follow`, then QueueParams / QueueMember /
QueueEntry events, then QueueStatusComplete). `restart()` closes every connection and the
listener and listens again on the same port, as an Asterisk restart looks to a client.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass, field

CRLF = "\r\n"


@dataclass
class Member:
    name: str
    status: int = 1      # device state: 1 not in use, 2 in use, 5 unavailable
    paused: bool = False
    in_call: bool = False


@dataclass
class ScriptedAmi:
    username: str = "callcenter"
    secret: str = "SAMPLE-ami-secret"
    banner: str = "Asterisk Call Manager/11.0.0"
    queue: str = "hotline-agents"
    waiting: int = 0
    members: list[Member] = field(default_factory=list)
    silent_actions: set[str] = field(default_factory=set)   # actions never answered
    refuse_originate: bool = False
    actions: list[dict[str, list[str]]] = field(default_factory=list)
    logins: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def emit(self, lines: list[str]) -> None:
        """Send an event to every logged-in client, as Asterisk does when something happens."""
        for writer in list(self._writers):
            self._send(writer, lines)

    def named(self, action: str) -> list[dict[str, list[str]]]:
        return [a for a in self.actions if a.get("Action", [""])[0].lower() == action.lower()]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            writer.write((self.banner + CRLF).encode())
            authenticated = False
            while True:
                block = await self._read_block(reader)
                if block is None:
                    return
                self.actions.append(block)
                name = block.get("Action", [""])[0].lower()
                action_id = block.get("ActionID", [""])[0]
                if name in self.silent_actions:
                    continue
                if name == "login":
                    ok = block.get("Username") == [self.username] and block.get("Secret") == [self.secret]
                    self.logins += 1
                    if not ok:
                        self._send(writer, ["Response: Error", f"ActionID: {action_id}",
                                            "Message: Authentication failed"])
                        await writer.drain()
                        return
                    authenticated = True
                    self._send(writer, ["Response: Success", f"ActionID: {action_id}",
                                        "Message: Authentication accepted"])
                    if block.get("Events", ["on"])[0].lower() != "off":
                        # What a real Asterisk then streams, with manager.conf channelvars.
                        self._send(writer, ["Event: FullyBooted", "Privilege: system,all", "Status: Fully Booted"])
                        self._send(writer, ["Event: Newchannel", "Privilege: call,all", "Channel: PJSIP/1001-00000001",
                                            "ChanVariable: CALLCENTER_CASE_NUMBER=261124000012"])
                elif not authenticated:
                    self._send(writer, ["Response: Error", f"ActionID: {action_id}", "Message: Permission denied"])
                elif name == "ping":
                    self._send(writer, ["Response: Success", f"ActionID: {action_id}", "Ping: Pong",
                                        "Timestamp: 1795477691.000000"])
                elif name == "originate":
                    if self.refuse_originate:
                        self._send(writer, ["Response: Error", f"ActionID: {action_id}", "Message: Originate failed"])
                    else:
                        self._send(writer, ["Response: Success", f"ActionID: {action_id}",
                                            "Message: Originate successfully queued"])
                elif name == "queuestatus":
                    self._queue_status(writer, action_id)
                elif name == "logoff":
                    self._send(writer, ["Response: Goodbye", f"ActionID: {action_id}",
                                        "Message: Thanks for all the fish."])
                    await writer.drain()
                    return
                else:
                    self._send(writer, ["Response: Error", f"ActionID: {action_id}",
                                        "Message: Invalid/unknown command"])
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def _queue_status(self, writer: asyncio.StreamWriter, action_id: str) -> None:
        aid = f"ActionID: {action_id}"
        self._send(writer, ["Response: Success", aid, "EventList: start", "Message: Queue status will follow"])
        self._send(writer, ["Event: QueueParams", f"Queue: {self.queue}", "Max: 50", "Strategy: rrmemory",
                            f"Calls: {self.waiting}", "Holdtime: 12", "TalkTime: 95", "Completed: 7",
                            "Abandoned: 2", "ServiceLevel: 0", "ServicelevelPerf: 0.0",
                            "ServicelevelPerf2: 0.0", "Weight: 0", aid])
        for member in self.members:
            self._send(writer, ["Event: QueueMember", f"Queue: {self.queue}", f"Name: {member.name}",
                                f"Location: {member.name}", f"StateInterface: {member.name}",
                                "Membership: dynamic", "Penalty: 0", "CallsTaken: 3", "LastCall: 0",
                                "LastPause: 0", "LoginTime: 1795470000", f"InCall: {int(member.in_call)}",
                                f"Status: {member.status}", f"Paused: {int(member.paused)}",
                                "PausedReason: ", "Wrapuptime: 0", aid])
        for position in range(1, self.waiting + 1):
            self._send(writer, ["Event: QueueEntry", f"Queue: {self.queue}", f"Position: {position}",
                                f"Channel: PJSIP/carrier-0000000{position}", "Uniqueid: 1795477691.9",
                                "CallerIDNum: 13812345678", "CallerIDName: unknown", "Wait: 30",
                                "Priority: 0", aid])
        items = 1 + len(self.members) + self.waiting
        self._send(writer, ["Event: QueueStatusComplete", aid, "EventList: Complete", f"ListItems: {items}"])

    @staticmethod
    def _send(writer: asyncio.StreamWriter, lines: list[str]) -> None:
        writer.write((CRLF.join(lines) + CRLF + CRLF).encode())

    @staticmethod
    async def _read_block(reader: asyncio.StreamReader) -> dict[str, list[str]] | None:
        block: dict[str, list[str]] = {}
        while True:
            raw = await reader.readline()
            if not raw:
                return None
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if block:
                    return block
                continue
            key, _, value = line.partition(":")
            block.setdefault(key.strip(), []).append(value.strip())
