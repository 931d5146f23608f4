"""Command builders: what Asterisk's argument splitter reads back, and no injection."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from callcenter.agi import commands
from callcenter.agi.errors import AgiArgumentError, AgiError
from callcenter.agi.protocol import MAX_COMMAND_BYTES, AgiConnection, AgiRequest
from tests.agi.asterisk_peer import split_agi_args

HOSTILE_VALUES = [
    "evil\nHANGUP",
    'evil\r\nEXEC System "rm -rf /"',
    "nul\x00byte",
    "bell\x07",
    "del\x7f",
    "esc\x1b[2J",
]
TRICKY_VALUES = [
    "",
    "plain",
    "Citizen Test",
    'say "hi" now',
    "back\\slash",
    "trailing backslash\\",
    '\\"',
    '"" HANGUP ""',
    '" HANGUP "',
    "tab\tinside",
    "  leading and trailing  ",
    "${CHANNEL} $[1+1]",
    "张三 李四 东城区",
    "שלום é",
    "a" * 1500,
]


def _argv(line: str) -> list[str]:
    return split_agi_args(line)


# ---- what Asterisk reads: the same argv as the reference transcripts ----------------------


@pytest.mark.parametrize(
    ("built", "transcript_line"),
    [
        (commands.answer(), "ANSWER"),
        (commands.stream_file("silence/1"), 'STREAM FILE silence/1 ""'),
        (
            commands.stream_file("hello-world", "0123456789*#"),
            'STREAM FILE hello-world "0123456789*#"',
        ),
        (commands.stream_file("silence/3", "#"), 'STREAM FILE silence/3 "#"'),
        (commands.stream_file("digits/1", "", 0), 'STREAM FILE digits/1 "" 0'),
        (commands.get_data("beep", 8000, 4), "GET DATA beep 8000 4"),
        (commands.get_data("silence/1", 2000, 5), "GET DATA silence/1 2000 5"),
        (commands.wait_for_digit(6000), "WAIT FOR DIGIT 6000"),
        (commands.wait_for_digit(-1), "WAIT FOR DIGIT -1"),
        (
            commands.record_file(
                "/var/spool/hotline/recordings/hotline_1795477698",
                "wav",
                "#",
                8000,
                beep=True,
                silence_s=4,
            ),
            'RECORD FILE /var/spool/hotline/recordings/hotline_1795477698 wav "#" 8000 0 BEEP s=4',
        ),
        (
            commands.record_file(
                "/var/spool/hotline/recordings/silent_1795477669", "wav", "#", 2000
            ),
            'RECORD FILE /var/spool/hotline/recordings/silent_1795477669 wav "#" 2000',
        ),
        (
            commands.record_file(
                "/var/spool/hotline/recordings/sip_1795477924", "wav", "#", 3000, offset_samples=0
            ),
            'RECORD FILE /var/spool/hotline/recordings/sip_1795477924 wav "#" 3000 0',
        ),
        (
            commands.record_file(
                "/var/spool/hotline/recordings/rechup_1795477773", "wav", "#", 20000, silence_s=10
            ),
            'RECORD FILE /var/spool/hotline/recordings/rechup_1795477773 wav "#" 20000 0 s=10',
        ),
        (commands.set_variable("IVR_RESULT", "12"), 'SET VARIABLE IVR_RESULT "12"'),
        (commands.set_variable("WITH SPACE", "a b c"), 'SET VARIABLE "WITH SPACE" "a b c"'),
        (commands.set_variable("QUOTED", 'say "hi" now'), 'SET VARIABLE QUOTED "say \\"hi\\" now"'),
        (commands.set_variable("UTF8", "שלום é"), 'SET VARIABLE UTF8 "שלום é"'),
        (commands.get_variable("IVR_RESULT"), "GET VARIABLE IVR_RESULT"),
        (commands.get_variable("WITH SPACE"), 'GET VARIABLE "WITH SPACE"'),
        (commands.get_full_variable("${CHANNEL}"), "GET FULL VARIABLE ${CHANNEL}"),
        (commands.channel_status(), "CHANNEL STATUS"),
        (commands.say_digits("42"), 'SAY DIGITS 42 ""'),
        (commands.verbose("hello from fastagi probe", 1), 'VERBOSE "hello from fastagi probe" 1'),
        (commands.control_stream_file("beep"), 'CONTROL STREAM FILE beep ""'),
        (commands.exec_application("Playback", "beep"), "EXEC Playback beep"),
        (commands.exec_application("NoSuchApp", "foo"), "EXEC NoSuchApp foo"),
        (commands.hangup(), "HANGUP"),
    ],
)
def test_builders_match_the_reference_commands(built: str, transcript_line: str) -> None:
    """Asterisk splits our line into the same argv as the probe's line in transcripts.txt."""
    assert _argv(built) == _argv(transcript_line)


def test_builders_for_the_rest_of_the_ivr() -> None:
    assert _argv(commands.queue("hotline", "t", timeout_s=300)) == [
        "EXEC",
        "Queue",
        "hotline,t,,,300",
    ]
    assert _argv(commands.queue("hotline")) == ["EXEC", "Queue", "hotline"]
    assert _argv(commands.dial("PJSIP/agent-7", 30, "tT")) == [
        "EXEC",
        "Dial",
        "PJSIP/agent-7,30,tT",
    ]
    assert _argv(commands.dial("PJSIP/agent-7")) == ["EXEC", "Dial", "PJSIP/agent-7"]
    assert _argv(commands.set_music(True, "default")) == ["SET", "MUSIC", "on", "default"]
    assert _argv(commands.set_music(False)) == ["SET", "MUSIC", "off"]
    assert _argv(commands.say_number(2024)) == ["SAY", "NUMBER", "2024", ""]
    assert _argv(commands.say_alpha("SZ2024A", "#")) == ["SAY", "ALPHA", "SZ2024A", "#"]
    assert _argv(commands.noop()) == ["NOOP"]
    assert _argv(commands.get_data("beep")) == ["GET", "DATA", "beep"]
    assert _argv(commands.get_data("beep", max_digits=4)) == ["GET", "DATA", "beep", "0", "4"]
    assert _argv(commands.control_stream_file("menu", "1", pause_key="0")) == [
        "CONTROL", "STREAM", "FILE", "menu", "1", "3000", "#", "*", "0",
    ]  # fmt: skip
    assert _argv(commands.control_stream_file("menu", skip_ms=5000)) == [
        "CONTROL",
        "STREAM",
        "FILE",
        "menu",
        "",
        "5000",
    ]


# ---- quoting and injection ----------------------------------------------------------------


@pytest.mark.parametrize("value", TRICKY_VALUES, ids=range(len(TRICKY_VALUES)))
def test_any_value_comes_back_as_exactly_one_argument(value: str) -> None:
    """Spaces, quotes, backslashes, `${...}` and UTF-8 arrive unchanged as one argv entry."""
    line = commands.set_variable("CALLER_NAME", value)
    assert "\n" not in line and "\r" not in line
    assert _argv(line) == ["SET", "VARIABLE", "CALLER_NAME", value]
    assert _argv(commands.set_variable(value or "x", "v"))[2] == (value or "x")


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=range(len(HOSTILE_VALUES)))
def test_control_characters_are_rejected_not_smuggled(value: str) -> None:
    """A caller name with a newline cannot become a second command line: it is refused."""
    for build in (
        lambda: commands.set_variable("CALLER_NAME", value),
        lambda: commands.set_variable(value, "x"),
        lambda: commands.stream_file(value),
        lambda: commands.get_data(value, 1000, 1),
        lambda: commands.record_file(value),
        lambda: commands.get_variable(value),
        lambda: commands.say_alpha(value),
    ):
        with pytest.raises(AgiArgumentError):
            build()


def test_argument_errors_are_agi_errors_and_value_errors() -> None:
    with pytest.raises(AgiError):
        commands.set_variable("X", "a\nb")
    with pytest.raises(ValueError):
        commands.set_variable("X", "a\nb")


def test_verbose_sanitises_instead_of_refusing() -> None:
    """A log message with a newline stays one line with one argument."""
    line = commands.verbose('caller "evil\nHANGUP" said\r\x00hi', 2)
    assert _argv(line) == ["VERBOSE", 'caller "evil HANGUP" said  hi', "2"]
    assert len(_argv(commands.verbose("x" * 5000))[1]) == 1000


def test_random_printable_values_round_trip() -> None:
    """Fuzz: any printable string survives the quoting exactly."""
    rng = random.Random(7)
    alphabet = " \"\\\t$'(){}[],|;#*ab张é"
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert _argv(commands.set_variable("V", value)) == ["SET", "VARIABLE", "V", value]


def test_built_commands_are_accepted_by_the_core() -> None:
    """The core sends a builder's line unchanged, with a single "\\n"."""
    conn = AgiConnection()
    conn.receive_data(b"agi_network: yes\n\n")
    assert isinstance(conn.next_event(), AgiRequest)
    line = commands.set_variable("NAME", 'O\'Brien "Bob" \\ 张')
    assert conn.send_command(line) == line.encode() + b"\n"


def test_too_long_a_line_is_refused_by_the_builder() -> None:
    """A value that would push the line past 2047 bytes never reaches Asterisk cut in two."""
    longest = "v" * (MAX_COMMAND_BYTES - 1 - len('SET VARIABLE "X" ""'))
    assert len(commands.set_variable("X", longest).encode()) == MAX_COMMAND_BYTES - 1
    with pytest.raises(AgiArgumentError, match="2047"):
        commands.set_variable("X", longest + "v")
    with pytest.raises(AgiArgumentError):
        commands.set_variable("X", "张" * 700)  # 2100 bytes of UTF-8


# ---- argument validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: commands.stream_file("beep", "12x"),
        lambda: commands.stream_file("beep", '"'),
        lambda: commands.stream_file(""),
        lambda: commands.get_data("beep", -5, 4),
        lambda: commands.get_data("beep", 1000, 0),
        lambda: commands.get_data("beep", True, 4),  # type: ignore[arg-type]
        lambda: commands.wait_for_digit(-2),
        lambda: commands.wait_for_digit("5000"),  # type: ignore[arg-type]
        lambda: commands.say_digits("12a"),
        lambda: commands.say_digits(""),
        lambda: commands.record_file("/tmp/x", timeout_ms=-3),
        lambda: commands.record_file("/tmp/x", silence_s=0),
        lambda: commands.record_file("/tmp/x", escape_digits="#\n"),
        lambda: commands.exec_application("Queue(hotline)"),
        lambda: commands.exec_application("Dial", "PJSIP/1,PJSIP/2"),
        lambda: commands.exec_application("Dial", 'PJSIP/1"'),
        lambda: commands.exec_application("Dial", "PJSIP/1|30"),
        lambda: commands.exec_application("Dial", "x(y)"),
        lambda: commands.queue("hotline", "t,r"),
        lambda: commands.verbose("x", 7),
        lambda: commands.set_variable("", "x"),
        lambda: commands.control_stream_file("beep", forward_key="x"),
    ],
)
def test_invalid_arguments_are_refused(build: Callable[[], str]) -> None:
    with pytest.raises(AgiArgumentError):
        build()
