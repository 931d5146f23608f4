"""The sans-I/O AMI core and the queue tracker on bytes a real Asterisk 22 sent
(tests/voice_calls/transcripts/README.md says what happened on that connection)."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

from callcenter.voice.ami_protocol import (
    MAX_HEADERS,
    MAX_LINE,
    ActionDone,
    AmiProtocol,
    AmiProtocolError,
    Banner,
    Event,
    encode_action,
)
from callcenter.voice.queue_events import QueueTracker, QueueUpdate

TRANSCRIPT = (Path(__file__).parent / "transcripts" / "ami_queue_asterisk22.raw").read_bytes()
NOW = dt.datetime(2026, 12, 3, 0, 0, tzinfo=dt.UTC)


def protocol_with_actions() -> AmiProtocol:
    proto = AmiProtocol()
    proto.action("Login", {"Username": "callcenter", "Secret": "x", "Events": "on"}, action_id="l1")
    proto.action("Originate", {"Channel": "Local/noanswer@test-agent/n"}, action_id="o1")
    proto.action("QueueStatus", {"Queue": "hotline-agents"}, action_id="q1")
    return proto


def feed_in_chunks(proto: AmiProtocol, data: bytes, sizes: list[int]) -> list[object]:
    out: list[object] = []
    position, index = 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        out.extend(proto.feed(data[position:position + size]))
        position += size
        index += 1
    return out


def test_a_real_session_frames_the_same_whatever_the_chunks() -> None:
    whole = protocol_with_actions().feed(TRANSCRIPT)
    rng = random.Random(8)
    for sizes in ([1], [2, 3, 5, 7], [rng.randint(1, 4000) for _ in range(50)]):
        assert feed_in_chunks(protocol_with_actions(), TRANSCRIPT, sizes) == whole
    assert isinstance(whole[0], Banner) and whole[0].version == "11.0.0"
    done = {item.action_id: item for item in whole if isinstance(item, ActionDone)}
    assert set(done) == {"l1", "o1", "q1"} and all(d.ok for d in done.values())
    assert done["l1"].message == "Authentication accepted"
    queue = done["q1"]
    assert [m["Event"] for m in queue.events] == ["QueueParams", "QueueMember", "QueueMember"]
    assert queue.response["EventList"] == "start"
    events = [item for item in whole if isinstance(item, Event)]
    names = [e.name for e in events]
    assert names.count("Hangup") == 8 and "QueueStatusComplete" not in names
    # OriginateResponse carries the ActionID of an action already answered: an event
    (originated,) = [e for e in events if e.name == "OriginateResponse"]
    assert (originated.get("ActionID"), originated.get("Response"), originated.get("Reason")) == (
        "o1", "Failure", "0")


def test_repeated_headers_and_channel_variables_are_kept() -> None:
    events = [item for item in protocol_with_actions().feed(TRANSCRIPT) if isinstance(item, Event)]
    connect = next(e for e in events if e.name == "AgentConnect")
    assert connect.message.variables() == {"CALLCENTER_CASE_NUMBER": "261124000012"}
    assert connect.message.variables("DestChanVariable") == {"CALLCENTER_CASE_NUMBER": "261124000012"}
    assert connect.get("uniqueid") == "1796284932.0" and connect.get("DestUniqueid") == "1796284932.2"
    assert connect.get("Interface") == "Local/agent@test-agent/n" and connect.get("HoldTime") == "0"


def test_the_queue_tracker_follows_the_real_calls() -> None:
    tracker = QueueTracker({"hotline-agents"}, leave_grace=2.0)
    updates: list[QueueUpdate] = []
    for item in protocol_with_actions().feed(TRANSCRIPT):
        if isinstance(item, Event):
            updates.extend(tracker.feed(item, NOW))
    summary = [(u.kind, u.call_id, u.wait_seconds, u.talk_seconds, u.interface, u.caller, u.case_number)
               for u in updates]
    assert summary == [
        ("joined", "1796284932.0", None, None, None, "13812345678", "261124000012"),
        ("answered", "1796284932.0", 0, None, "Local/agent@test-agent/n", "13812345678", "261124000012"),
        ("completed", "1796284932.0", None, 4, "Local/agent@test-agent/n", "13812345678", "261124000012"),
        ("joined", "1796284942.4", None, None, None, "13912345678", None),
        ("abandoned", "1796284942.4", 3, None, None, "13912345678", None),
    ]
    # Times are Asterisk's (manager.conf timestampevents), not when the events were read
    assert updates[1].at == dt.datetime.fromtimestamp(1796284932.818366, dt.UTC)
    assert updates[4].at - updates[3].at == dt.timedelta(seconds=1796284945.990003 - 1796284942.485570)
    assert tracker.expire(NOW + dt.timedelta(hours=1)) == [] and len(tracker) == 0


def _event(name: str, uniqueid: str, at: float, **headers: str) -> Event:
    from callcenter.voice.ami_protocol import Message

    fields = {"Event": name, "Timestamp": f"{at:.6f}", "Uniqueid": uniqueid, "Queue": "hotline-agents",
              "CallerIDNum": "13812345678", **headers}
    return Event(name, Message(tuple(fields.items())))


def test_a_caller_who_leaves_unanswered_is_left_after_the_grace() -> None:
    tracker = QueueTracker({"hotline-agents"}, leave_grace=2.0)
    start = NOW.timestamp()
    assert [u.kind for u in tracker.feed(_event("QueueCallerJoin", "9.1", start), NOW)] == ["joined"]
    assert tracker.feed(_event("QueueCallerLeave", "9.1", start + 300), NOW) == []
    assert tracker.expire(NOW + dt.timedelta(seconds=301)) == []  # an AgentConnect may still follow
    (left,) = tracker.expire(NOW + dt.timedelta(seconds=303))
    assert (left.kind, left.wait_seconds) == ("left", 300)
    # other queues, bad ids and strangers are ignored, not crashes
    assert tracker.feed(_event("QueueCallerJoin", "9.2", start, Queue="other"), NOW) == []
    assert tracker.feed(_event("QueueCallerJoin", "9.3\r\nX", start), NOW) == []
    assert tracker.feed(_event("AgentConnect", "9.4", start, HoldTime="-5"), NOW) == []
    assert tracker.ignored == 3
    # a caller whose end was never seen (AMI was down) is forgotten after a day, silently
    assert [u.kind for u in tracker.feed(_event("QueueCallerJoin", "9.5", start), NOW)] == ["joined"]
    assert tracker.expire(NOW + dt.timedelta(hours=23)) == [] and len(tracker) == 1
    assert tracker.expire(NOW + dt.timedelta(hours=25)) == [] and len(tracker) == 0


def test_garbage_long_lines_and_floods_are_dropped_and_the_stream_recovers() -> None:
    proto = AmiProtocol()
    proto.action("Ping", action_id="p1")
    out = proto.feed(b"Asterisk Call Manager/11.0.0\r\n")
    out += proto.feed(b"Event: X\r\nJunk: " + b"a" * (MAX_LINE + 10) + b"\r\nMore: 1\r\n\r\n")
    out += proto.feed(b"Event: Flood\r\n" + b"K: v\r\n" * (MAX_HEADERS + 5) + b"\r\n")
    out += proto.feed(b"Response: Success\r\nActionID: not-ours\r\n\r\n")   # nobody waits for it
    out += proto.feed(b"Response: Success\r\nActionID: p1\r\nPing: Pong\r\n\r\n")
    assert [type(o).__name__ for o in out] == ["Banner", "ActionDone"]
    assert proto.rejected == 2 and proto.waiting == 0
    # a line without an end, longer than the limit, is thrown away too
    proto.feed(b"x" * (MAX_LINE + 1))
    assert proto.rejected == 3
    assert [type(o).__name__ for o in proto.feed(b"\r\nEvent: FullyBooted\r\n\r\n")] == ["Event"]


def test_actions_cannot_inject_headers() -> None:
    assert encode_action("Originate", {"Variable": ["A=1", "B=2"]}, "x1") == (
        b"Action: Originate\r\nActionID: x1\r\nVariable: A=1\r\nVariable: B=2\r\n\r\n")
    with pytest.raises(AmiProtocolError):
        encode_action("Originate", {"Channel": "PJSIP/1\r\nAction: Command"}, "x2")
    with pytest.raises(AmiProtocolError):
        encode_action("Originate", {"Bad Key": "1"}, "x3")
    with pytest.raises(AmiProtocolError):
        encode_action("Ping", {}, "id\nAction: Command")
