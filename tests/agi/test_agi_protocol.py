"""The sans-I/O FastAGI core against the captured Asterisk 22 transcripts and hostile bytes."""

from __future__ import annotations

import os

import random
from collections import deque

import pytest

from callcenter.agi.errors import (
    AgiDeadChannel,
    AgiHangup,
    AgiInvalidCommand,
    AgiLocalProtocolError,
    AgiProtocolError,
    AgiUsageError,
)
from callcenter.agi.protocol import (
    MAX_COMMAND_BYTES,
    NEED_DATA,
    PAUSED,
    AgiConnection,
    AgiLimits,
    AgiRequest,
    AgiResult,
    AgiState,
    ConnectionClosed,
    Event,
    Hangup,
    parse_result_line,
    raise_for_status,
)
from tests.agi.asterisk_peer import (
    ReferenceSession,
    default_env,
    encode_env,
    load_reference_sessions,
    parse_transcripts,
    reference_dir,
)

SESSIONS = load_reference_sessions()  # tests/agi/reference: a plain clone has them too
SESSION_IDS = [session.name for session in SESSIONS]
MINIMAL_ENV = b"agi_network: yes\nagi_uniqueid: 1.1\n\n"
CHUNKINGS = [None, *range(1, 10)]  # whole, then 1..9 bytes per read


def _chunks(data: bytes, size: int | None) -> list[bytes]:
    if size is None:
        return [data] if data else []
    return [data[i : i + size] for i in range(0, len(data), size)]


def _is_refused_by_design(line: bytes) -> bool:
    """The quirks probe sent a CR inside a line and three pipelined commands."""
    body = line[:-1]
    return b"\r" in body or b"\n" in body


def _replay(
    session: ReferenceSession, chunk_size: int | None, trailing: bytes = b""
) -> tuple[list[Event], list[bytes], AgiConnection]:
    """Feed Asterisk's side of a session in pieces, sending the probe's commands whenever
    the core is idle; return the events, the bytes our side sent, and the core."""
    conn = AgiConnection()
    if not session.has_env:  # a fragment: give it an env block first
        conn.receive_data(MINIMAL_ENV)
        assert isinstance(conn.next_event(), AgiRequest)
    commands = deque(session.outbound)
    events: list[Event] = []
    sent: list[bytes] = []

    def send(line: bytes) -> bytes:
        if _is_refused_by_design(line):
            with pytest.raises(AgiLocalProtocolError):
                conn.send_command(line[:-1])
            assert conn.state is AgiState.IDLE
            line = line.split(b"\n")[0].rstrip(b"\r") + b"\n"
        return conn.send_command(line[:-1])

    def pump() -> None:
        while True:
            if conn.state is AgiState.IDLE and commands:
                sent.append(send(commands.popleft()))
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                return
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return

    for chunk in _chunks(session.inbound + trailing, chunk_size):
        conn.receive_data(chunk)
        pump()
    if session.ends_with_eof:
        conn.receive_data(b"")
    pump()
    return events, sent, conn


def _expected(session: ReferenceSession) -> list[tuple[type, str]]:
    """Event kinds and raw text, read straight off the transcript's `<<` lines."""
    expected: list[tuple[type, str]] = []
    in_env, block = session.has_env, None
    for line in session.inbound_lines:
        if line == b"":
            expected.append((ConnectionClosed, ""))
            continue
        text = line.decode("utf-8")[:-1]
        if in_env:
            if text == "":
                expected.append((AgiRequest, ""))
                in_env = False
        elif block is not None:
            block.append(text)
            if text.startswith("520 "):
                expected.append((AgiResult, "\n".join(block)))
                block = None
        elif text.startswith("520-"):
            block = [text]
        elif text == "HANGUP":
            expected.append((Hangup, ""))
        else:
            expected.append((AgiResult, text))
    return expected


def _summary(events: list[Event]) -> list[tuple[type, str]]:
    return [(type(e), e.raw if isinstance(e, AgiResult) else "") for e in events]


def _env_of(session: ReferenceSession) -> dict[str, str]:
    env = {}
    for line in session.inbound_lines:
        if line == b"\n":
            break
        key, _, value = line.decode("utf-8")[:-1].partition(": ")
        env[key] = value
    return env


def _session(name: str) -> ReferenceSession:
    return next(session for session in SESSIONS if session.name == name)


def _idle(env: bytes = MINIMAL_ENV) -> AgiConnection:
    conn = AgiConnection()
    conn.receive_data(env)
    assert isinstance(conn.next_event(), AgiRequest)
    return conn


def _drain(conn: AgiConnection) -> list[Event]:
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


# ---- replaying the reference transcripts -------------------------------------------------


def test_every_transcript_is_loaded() -> None:
    """The loader finds all twelve logged connections, ten of them with a full env block."""
    assert len(SESSIONS) == 12
    assert sum(session.has_env for session in SESSIONS) == 11


def test_the_kept_sessions_match_the_shared_transcripts() -> None:
    """tests/agi/reference is an extract of ../shared; CI, which has ../shared, checks it is current."""
    source = reference_dir() / "transcripts.txt"
    if not source.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{source} is missing (set CALLCENTER_SHARED_DIR)")
        pytest.skip(f"{source} is not beside this clone; the kept extract is used as is")
    assert parse_transcripts(source) == SESSIONS


@pytest.mark.parametrize(
    "chunk_size", CHUNKINGS, ids=lambda size: "whole" if size is None else f"{size}b"
)
@pytest.mark.parametrize("session", SESSIONS, ids=SESSION_IDS)
def test_replay_yields_the_transcript_events(
    session: ReferenceSession, chunk_size: int | None
) -> None:
    """Whole, byte by byte or in 2..9-byte reads, every `<<` line becomes the right event."""
    events, _, conn = _replay(session, chunk_size)
    assert _summary(events) == _expected(session)
    if session.has_env:
        request = events[0]
        assert isinstance(request, AgiRequest)
        assert dict(request.headers) == _env_of(session)
    assert conn.next_event() in (NEED_DATA, events[-1])


@pytest.mark.parametrize(
    "chunk_size", CHUNKINGS, ids=lambda size: "whole" if size is None else f"{size}b"
)
@pytest.mark.parametrize("session", SESSIONS, ids=SESSION_IDS)
def test_replay_sends_the_transcript_command_bytes(
    session: ReferenceSession, chunk_size: int | None
) -> None:
    """The bytes our side sends equal the probe's command lines, except the CR and
    pipelining quirks, which the core refuses and which are replaced by their first line."""
    _, sent, _ = _replay(session, chunk_size)
    expected = [
        line.split(b"\n")[0].rstrip(b"\r") + b"\n" if _is_refused_by_design(line) else line
        for line in session.outbound
    ]
    assert sent == expected
    assert all(line.endswith(b"\n") and b"\r" not in line for line in sent)


@pytest.mark.parametrize("session", SESSIONS, ids=SESSION_IDS)
def test_replay_with_trailing_partial_line(session: ReferenceSession) -> None:
    """An unterminated line after the transcript yields nothing, or is reported at EOF."""
    trailing = b"200 resu"
    events, _, conn = _replay(session, 3, trailing=trailing)
    baseline, _, _ = _replay(session, None)
    if session.ends_with_eof:
        assert _summary(events) == _summary(baseline)
        assert events[-1] == ConnectionClosed(unparsed=trailing)
    else:
        assert _summary(events) == _summary(baseline)
        assert conn.next_event() is NEED_DATA
        assert conn.buffered == len(trailing)


@pytest.mark.parametrize(
    "session", [s for s in SESSIONS if not s.ends_with_eof], ids=lambda s: s.name
)
def test_replay_with_trailing_unsolicited_line(session: ReferenceSession) -> None:
    """A complete extra line pauses an idle core; it only becomes a result if one is awaited."""
    events, _, conn = _replay(session, 5, trailing=b"200 result=0\n")
    baseline, _, baseline_conn = _replay(session, None)
    if baseline_conn.state is AgiState.AWAITING:  # 8c: WAIT FOR DIGIT was never answered
        assert _summary(events) == [*_summary(baseline), (AgiResult, "200 result=0")]
    else:
        assert _summary(events) == _summary(baseline)
        assert conn.next_event() is PAUSED


def test_quirk_transcript_shows_why_cr_and_pipelining_are_refused() -> None:
    """In 8a Asterisk kept the CR in the value and answered only the first pipelined line."""
    events, _, _ = _replay(_session("8a-c3"), None)
    raws = [event.raw for event in events if isinstance(event, AgiResult)]
    assert "200 result=1 ([abc\r])" in raws
    assert raws[-1] == "200 result=1 (abc\r)"
    assert isinstance(events[-1], Hangup)


# ---- the environment block ----------------------------------------------------------------


def test_request_accessors_on_the_happy_path_env() -> None:
    """The 1a env block: caller ID set by the dialplan and two AGI() arguments."""
    events, _, _ = _replay(_session("1a-c4"), None)
    request = events[0]
    assert isinstance(request, AgiRequest)
    assert len(request.headers) == 24
    assert request.network_script == request.script == "hotline"
    assert request.request_url == "agi://127.0.0.1:4573/hotline"
    assert request.uniqueid == "1795477691.6"
    assert request.channel == "Local/dtmf@caller-00000003;1"
    assert request.channel_type == "Local"
    assert request.callerid == "0501234567"
    assert request.calleridname == "Citizen Test"
    assert request.callingpres == 0
    assert request.dnid is None and request.rdnis is None
    assert request.context == "hotline" and request.extension == "s" and request.priority == "4"
    assert request.accountcode == "" and request.enhanced is False
    assert request.version == "22.10.1" and request.language == "en"
    assert request.threadid == "140240834705088"
    assert request.args == ("first arg", "second")
    assert request.get("callerid") == request.get("agi_callerid") == "0501234567"


def test_request_accessors_with_query_string_and_unknown_caller() -> None:
    """In 3 the URL has a query string and there is no caller ID."""
    request = _replay(_session("3-c3"), None)[0][0]
    assert isinstance(request, AgiRequest)
    assert request.network_script == "errors?foo=bar&x=1"
    assert request.script == "errors"
    assert request.query == {"foo": "bar", "x": "1"}
    assert request.callerid is None and request.calleridname is None
    assert request.callingpres == 67
    assert request.args == ()
    assert len(request.headers) == 22


def test_request_accessors_on_the_sip_call() -> None:
    """In 7a the From user is the caller ID and the DNID is the dialled number."""
    request = _replay(_session("7a-c3"), None)[0][0]
    assert isinstance(request, AgiRequest)
    assert (request.channel_type, request.callerid, request.dnid, request.args) == (
        "PJSIP",
        "citizen",
        "100",
        ("sip",),
    )


def test_request_repr_leaves_out_caller_id_and_channel() -> None:
    """Logging a request by accident must not leak the caller's number."""
    request = AgiRequest(default_env(callerid="13800138000"))
    assert "13800138000" not in repr(request)
    assert "Local/" not in repr(request)


def test_crlf_line_endings_are_tolerated() -> None:
    """`\\r\\n` on input parses like `\\n`."""
    env = encode_env(default_env()).replace(b"\n", b"\r\n")
    conn = _idle(env)
    assert conn.request is not None and conn.request.calleridname == "Citizen Test"
    conn.send_command("ANSWER")
    conn.receive_data(b"HANGUP\r\n200 result=0\r\n")
    assert _drain(conn) == [Hangup(), AgiResult(code=200, result="0", raw="200 result=0")]


def test_non_utf8_bytes_are_replaced_not_fatal() -> None:
    """A Latin-1 caller name or value decodes with U+FFFD instead of failing the call."""
    conn = _idle(b"agi_network: yes\nagi_calleridname: Jos\xe9 \xff\n\n")
    assert conn.request is not None and conn.request.calleridname == "Jos\ufffd \ufffd"
    conn.send_command("GET VARIABLE X")
    conn.receive_data(b"200 result=1 (caf\xe9)\n")
    result = conn.next_event()
    assert isinstance(result, AgiResult) and result.data == "caf\ufffd"


def test_eof_in_the_middle_of_the_env_block() -> None:
    """A peer that leaves before the empty line just closes: no request, no error."""
    conn = AgiConnection()
    conn.receive_data(b"agi_network: yes\nagi_netw")
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed(unparsed=b"agi_netw")
    assert conn.next_event() == ConnectionClosed(unparsed=b"agi_netw")  # stays closed
    assert conn.request is None and conn.state is AgiState.CLOSED
    with pytest.raises(AgiLocalProtocolError):
        conn.receive_data(b"more")
    with pytest.raises(AgiLocalProtocolError):
        conn.send_command("ANSWER")


# ---- results and HANGUP lines -------------------------------------------------------------

# Every result form in transcripts.txt, plus edge cases, with what the accessors say.
RESULT_TABLE: list[tuple[str, dict[str, object]]] = [
    ("200 result=0", {"result": "0", "number": 0, "digit": None, "data": None}),
    ("200 result=-1", {"failed": True, "digits": None, "digit": None}),
    ("200 result=0 endpos=8000", {"endpos": 8000, "digit": None}),
    ("200 result=0 endpos=3520", {"endpos": 3520}),
    ("200 result=0 endpos=7360", {"endpos": 7360}),
    ("200 result=0 endpos=24000", {"endpos": 24000}),
    ("200 result=57 endpos=8480", {"digit": "9", "endpos": 8480}),
    ("200 result=-1 endpos=0", {"failed": True, "endpos": 0}),
    ("200 result=0 endpos=-1", {"endpos": -1}),
    ("200 result=12", {"digits": "12"}),
    ("200 result=456", {"digits": "456"}),
    ("200 result=*0", {"digits": "*0", "number": None, "digit": None}),
    ("200 result=", {"digits": "", "timed_out": False}),
    ("200 result= (timeout)", {"digits": "", "timed_out": True, "data": "timeout"}),
    ("200 result=78 (timeout)", {"digits": "78", "timed_out": True}),
    ("200 result=53", {"digit": "5"}),
    ("200 result=65", {"digit": "A"}),
    ("200 result=35 (dtmf) endpos=9760", {"digit": "#", "data": "dtmf", "endpos": 9760}),
    ("200 result=0 (timeout) endpos=57600", {"timed_out": True, "endpos": 57600}),
    ("200 result=0 (timeout) endpos=24000", {"timed_out": True, "endpos": 24000}),
    ("200 result=0 (timeout) endpos=0", {"timed_out": True, "endpos": 0}),
    ("200 result=-1 (hangup) endpos=11360", {"failed": True, "data": "hangup", "endpos": 11360}),
    ("200 result=1", {"number": 1}),
    ("200 result=1 (12)", {"data": "12"}),
    ("200 result=1 (1)", {"data": "1"}),
    ("200 result=1 (Local/dtmf@caller-00000003;1)", {"data": "Local/dtmf@caller-00000003;1"}),
    ("200 result=1 (a b c)", {"data": "a b c"}),
    ('200 result=1 (say "hi" now)', {"data": 'say "hi" now'}),
    ("200 result=1 (שלום é)", {"data": "שלום é"}),
    ("200 result=1 (abc\r)", {"data": "abc\r"}),
    ("200 result=1 ([abc\r])", {"data": "[abc\r]"}),
    ("200 result=6", {"number": 6, "digit": None}),
    ("200 result=-2", {"number": -2}),
    ("200 result=1 ()", {"data": ""}),
    ("200 result=1 (x) endpos=5)", {"data": "x) endpos=5", "endpos": None}),
    ("200 result=1 (a (b) c) endpos=7", {"data": "a (b) c", "endpos": 7}),
    (
        "510 Invalid or unknown command",
        {"code": 510, "ok": False, "data": "Invalid or unknown command"},
    ),
    (
        "511 Command Not Permitted on a dead channel or intercept routine",
        {"code": 511, "ok": False, "result": None},
    ),
]


@pytest.mark.parametrize(("line", "expected"), RESULT_TABLE, ids=[line for line, _ in RESULT_TABLE])
def test_result_lines_parse(line: str, expected: dict[str, object]) -> None:
    """Each result form gives the documented fields and helpers."""
    result = parse_result_line(line)
    assert result is not None and result.raw == line
    for attribute, value in expected.items():
        assert getattr(result, attribute) == value, attribute


def test_the_table_covers_every_result_line_in_the_transcripts() -> None:
    """No result form seen from a real Asterisk is left out of RESULT_TABLE."""
    known = {line for line, _ in RESULT_TABLE}
    seen = set()
    for session in SESSIONS:
        for event in _replay(session, None)[0]:
            if isinstance(event, AgiResult) and event.code != 520:
                seen.add(event.raw)
    assert seen - known == set()


def test_multi_line_520_becomes_one_result_with_the_usage_text() -> None:
    """The 520 block of transcript 3 is read up to `520 End of proper usage.`."""
    conn = _idle()
    conn.send_command("GET DATA")
    conn.receive_data(
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b"Stream the given file, and receive DTMF data.\n"
        b"HANGUP\n"
        b"Returns the digits received from the channel at the other end.\n"
    )
    assert conn.next_event() is NEED_DATA and conn.state is AgiState.AWAITING
    conn.receive_data(b"520 End of proper usage.\n")
    result = conn.next_event()
    assert isinstance(result, AgiResult) and result.code == 520
    assert result.usage == (
        "Stream the given file, and receive DTMF data.\nHANGUP\n"
        "Returns the digits received from the channel at the other end."
    )
    assert conn.state is AgiState.IDLE and not conn.hangup_seen
    with pytest.raises(AgiUsageError) as raised:
        raise_for_status(result)
    assert "receive DTMF data" in raised.value.usage


def test_single_line_520_is_a_complete_result() -> None:
    conn = _idle()
    conn.send_command("SAY DATE")
    conn.receive_data(b"520 Invalid command syntax.  Proper usage not available.\n")
    result = conn.next_event()
    assert isinstance(result, AgiResult) and result.code == 520 and result.usage == ""


def test_hangup_lines_anywhere() -> None:
    """HANGUP before a result, between results, while idle and repeated at the end."""
    conn = _idle()
    conn.send_command("GET DATA beep 10000 4")
    conn.receive_data(b"HANGUP\n200 result=-1\nHANGUP\n")
    assert _drain(conn) == [Hangup(), parse_result_line("200 result=-1"), Hangup()]
    assert conn.hangup_seen and conn.dead and conn.state is AgiState.IDLE
    conn.send_command("WAIT FOR DIGIT 1000")
    conn.receive_data(
        b"511 Command Not Permitted on a dead channel or intercept routine\nHANGUP\nHANGUP\n"
    )
    events = _drain(conn)
    assert [type(event) for event in events] == [AgiResult, Hangup, Hangup]
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()


def test_511_marks_the_channel_dead_without_a_hangup_line() -> None:
    """With AGISIGHUP=no (8b) the only sign of the hangup is 511."""
    events, _, conn = _replay(_session("8b-c1"), None)
    assert not any(isinstance(event, Hangup) for event in events)
    assert conn.dead and not conn.hangup_seen


def test_provisional_100_line_is_skipped() -> None:
    conn = _idle()
    conn.send_command("GOSUB sub s 1")
    conn.receive_data(b"100 result=0 Trying...\n200 result=0 Gosub complete\n")
    with pytest.raises(AgiProtocolError):  # trailing free text on a 200 line is not accepted
        conn.next_event()
    conn = _idle()
    conn.send_command("GOSUB sub s 1")
    conn.receive_data(b"100 result=0 Trying...\n200 result=0\n")
    assert _drain(conn) == [parse_result_line("200 result=0")]


def test_eof_while_a_command_is_pending() -> None:
    """AGIEXITONHANGUP (8c): HANGUP twice, then EOF, and the command never gets a result."""
    conn = _idle()
    conn.send_command("WAIT FOR DIGIT 1000")
    conn.receive_data(b"HANGUP\nHANGUP\n")
    conn.receive_data(b"")
    assert _drain(conn) == [Hangup(), Hangup(), ConnectionClosed()]
    assert conn.pending_command == "WAIT FOR DIGIT 1000"


@pytest.mark.parametrize(
    ("code_line", "error"),
    [
        ("510 Invalid or unknown command", AgiInvalidCommand),
        ("511 Command Not Permitted on a dead channel or intercept routine", AgiDeadChannel),
        ("520 Invalid command syntax.  Proper usage not available.", AgiUsageError),
    ],
)
def test_raise_for_status(code_line: str, error: type[Exception]) -> None:
    result = parse_result_line(code_line)
    assert result is not None
    with pytest.raises(error) as raised:
        raise_for_status(result)
    assert raised.value.result is result  # type: ignore[attr-defined]
    assert isinstance(raised.value, AgiHangup) == (error is AgiDeadChannel)


def test_raise_for_status_returns_200_results() -> None:
    result = parse_result_line("200 result=-1")
    assert result is not None and raise_for_status(result) is result


# ---- what we send -------------------------------------------------------------------------


def test_only_one_command_in_flight() -> None:
    """A second command before the first result is refused and nothing is emitted for it."""
    conn = _idle()
    assert conn.send_command("ANSWER") == b"ANSWER\n"
    with pytest.raises(AgiLocalProtocolError, match="still in flight"):
        conn.send_command('STREAM FILE beep ""')
    assert conn.pending_command == "ANSWER"
    conn.receive_data(b"200 result=0\n")
    assert isinstance(conn.next_event(), AgiResult)
    assert conn.send_command(b'STREAM FILE beep ""') == b'STREAM FILE beep ""\n'


def test_no_command_before_the_env_block() -> None:
    conn = AgiConnection()
    conn.receive_data(b"agi_network: yes\n")
    assert conn.next_event() is NEED_DATA
    with pytest.raises(AgiLocalProtocolError, match="environment"):
        conn.send_command("ANSWER")


@pytest.mark.parametrize(
    "command",
    [
        "GET VARIABLE CHANNEL\r",
        "GET VARIABLE CRLFVAR\nCHANNEL STATUS",
        "ANSWER\n",
        "SET VARIABLE X a\x00b",
        "VERBOSE \x1b[31m",
        "",
        "   ",
        "VERBOSE " + "x" * (MAX_COMMAND_BYTES - len("VERBOSE ")),
        b"SET VARIABLE X \xff",
        "SET VARIABLE X \udc80",
    ],
    ids=[
        "cr",
        "pipelined",
        "trailing-lf",
        "nul",
        "escape",
        "empty",
        "blank",
        "too-long",
        "bad-utf8",
        "surrogate",
    ],
)
def test_command_lines_that_are_refused(command: str | bytes) -> None:
    """Nothing that could split into two commands, carry a CR, or overflow res_agi's buffer."""
    conn = _idle()
    with pytest.raises(AgiLocalProtocolError):
        conn.send_command(command)
    assert conn.state is AgiState.IDLE and conn.pending_command is None


def test_longest_command_line_fits_the_asterisk_buffer() -> None:
    command = "VERBOSE " + "x" * (MAX_COMMAND_BYTES - 1 - len("VERBOSE "))
    assert len(_idle().send_command(command)) == MAX_COMMAND_BYTES


def test_utf8_command_is_sent_as_utf8() -> None:
    """Transcript 8a: a UTF-8 value round-trips."""
    assert (
        _idle().send_command('SET VARIABLE UTF8 "שלום é"')
        == 'SET VARIABLE UTF8 "שלום é"\n'.encode()
    )


# ---- hostile peers ------------------------------------------------------------------------


def test_env_block_that_never_ends_is_cut_at_the_line_limit() -> None:
    """Header lines for ever: an error at line 257, not an endless buffer."""
    conn = AgiConnection()
    fed = 0
    with pytest.raises(AgiProtocolError, match="256 lines"):
        for i in range(10_000):
            conn.receive_data(f"agi_x{i}: y\n".encode())
            fed += 1
            conn.next_event()
    assert fed == 257
    assert conn.state is AgiState.ERROR


def test_env_block_that_is_too_large_is_refused() -> None:
    conn = AgiConnection()
    line = b"agi_big_%03d: " + b"v" * 1000 + b"\n"
    with pytest.raises(AgiProtocolError, match="larger than"):
        for i in range(100):
            conn.receive_data(line.replace(b"%03d", b"%03d" % i))
            conn.next_event()


def test_line_without_newline_is_refused_before_it_ends() -> None:
    """The error comes once the limit is passed, without waiting for a newline."""
    conn = AgiConnection()
    conn.receive_data(b"agi_network: " + b"y" * 8000)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"y" * 200)
    with pytest.raises(AgiProtocolError, match="without a newline"):
        conn.next_event()
    conn.receive_data(b"z" * 1_000_000)
    assert conn.buffered == 0  # nothing is kept after the error


def test_overlong_result_line_is_refused() -> None:
    conn = _idle()
    conn.send_command("GET VARIABLE X")
    conn.receive_data(b"200 result=1 (" + b"v" * 9000 + b")\n")
    with pytest.raises(AgiProtocolError, match="longer than"):
        conn.next_event()


def test_limits_are_configurable() -> None:
    conn = AgiConnection(AgiLimits(max_env_lines=2))
    conn.receive_data(b"agi_a: 1\nagi_b: 2\nagi_c: 3\n\n")
    with pytest.raises(AgiProtocolError, match="2 lines"):
        conn.next_event()


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: callcenter\r\n\r\n",
        b"\n",
        b"agi_network yes\n\n",
        b"AGI_NETWORK: yes\n\n",
        b"agi_network: yes\nagi_network: no\n\n",
        b"agi_\xffkey: yes\n\n",
        b"HANGUP\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n",
    ],
    ids=[
        "http",
        "empty-block",
        "no-colon",
        "upper-case",
        "duplicate",
        "binary-key",
        "hangup-first",
        "tls-hello",
    ],
)
def test_garbage_instead_of_an_env_block(data: bytes) -> None:
    conn = AgiConnection()
    conn.receive_data(data)
    with pytest.raises(AgiProtocolError):
        _drain(conn)


@pytest.mark.parametrize(
    "line",
    [
        b"\n",
        b"garbage\n",
        b"HANGUPX\n",
        b"200\n",
        b"2000 result=1\n",
        b"200result=1\n",
        b"200 foo\n",
        b"200 result=abc\n",
        b"200 result=1 garbage\n",
        b"200 result=1 (unclosed\n",
        b"200 result=1 trailing)\n",
        b"999 Nope\n",
        b"404 Not Found\n",
        b"200 result=1" + b" k=v" * 17 + b"\n",
        b"\x00\x01\x02\n",
    ],
)
def test_absurd_result_lines(line: bytes) -> None:
    """Anything that is not a known response form is a protocol error, and it sticks."""
    conn = _idle()
    conn.send_command("ANSWER")
    conn.receive_data(line)
    with pytest.raises(AgiProtocolError) as first:
        conn.next_event()
    with pytest.raises(AgiProtocolError) as again:
        conn.next_event()
    assert again.value is first.value
    assert conn.state is AgiState.ERROR
    with pytest.raises(AgiLocalProtocolError):
        conn.send_command("ANSWER")


def test_usage_block_that_never_ends_is_cut() -> None:
    conn = _idle()
    conn.send_command("GET DATA")
    conn.receive_data(b"520-Invalid command syntax.  Proper usage follows:\n" + b"text\n" * 300)
    with pytest.raises(AgiProtocolError, match="usage"):
        _drain(conn)


def test_unsolicited_lines_pause_and_then_fail_when_they_pile_up() -> None:
    conn = _idle()
    conn.receive_data(b"200 result=0\n")
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED  # still there, still nobody's
    conn.receive_data(b"200 result=0\n" * 6000)
    with pytest.raises(AgiProtocolError, match="no command in flight"):
        conn.next_event()


def test_unsolicited_line_at_eof_is_reported_as_unparsed() -> None:
    conn = _idle()
    conn.receive_data(b"HANGUP\n200 result=0\n")
    conn.receive_data(b"")
    assert _drain(conn) == [Hangup(), ConnectionClosed(unparsed=b"200 result=0\n")]


@pytest.mark.parametrize("seed", range(40))
def test_random_bytes_never_crash_or_hang(seed: int) -> None:
    """Random input ends in events, NEED_DATA or AgiProtocolError: nothing else, and soon."""
    rng = random.Random(seed)
    alphabet = [
        b"\n",
        b"\r",
        b" ",
        b"HANGUP\n",
        b"200 result=",
        b"520-",
        b"520 ",
        b"(",
        b")",
        b"=",
        b"agi_x: y\n",
        b"\xff",
        b"1",
    ]
    conn = _idle() if seed % 2 else AgiConnection()
    steps = 0
    try:
        for _ in range(200):
            conn.receive_data(b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))))
            while True:
                steps += 1
                assert steps < 10_000
                if conn.state is AgiState.IDLE:
                    conn.send_command("NOOP")
                event = conn.next_event()
                if event is NEED_DATA or event is PAUSED:
                    break
        conn.receive_data(b"")
        _drain(conn)
    except AgiProtocolError:
        assert conn.state is AgiState.ERROR
    assert conn.buffered <= AgiLimits().max_unsolicited_bytes + AgiLimits().max_line_bytes


def test_error_messages_mask_phone_numbers() -> None:
    """A garbage line quoted in an error (and so in a log line) has its numbers masked."""
    conn = AgiConnection()
    conn.receive_data(b"agi_callerid 13800138000\n")
    with pytest.raises(AgiProtocolError) as raised:
        conn.next_event()
    assert "13800138000" not in str(raised.value)
    assert "138****8000" in str(raised.value)
