"""The Twisted FastAGI server over real sockets on 127.0.0.1, against the scripted Asterisk."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
from structlog.typing import EventDict
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.testing import MemoryReactor

from callcenter.agi import commands
from callcenter.agi.errors import (
    AgiDeadChannel,
    AgiHangup,
    AgiInvalidCommand,
    AgiLocalProtocolError,
    AgiUsageError,
)
from callcenter.agi.protocol import AgiLimits, AgiResult
from callcenter.agi.server import AgiCall, start_agi_server
from callcenter.runtime import install_reactor
from tests.agi.asterisk_peer import (
    DISCONNECT,
    AgiServerHarness,
    CallTranscript,
    ScriptedAsterisk,
    load_reference_sessions,
    split_agi_args,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

RECORDING = "/var/spool/hotline/recordings/hotline_1795477698"


def _events(logs: list[EventDict], name: str) -> list[EventDict]:
    return [entry for entry in logs if entry["event"] == name]


async def intake(call: AgiCall) -> None:
    """A small IVR: answer, collect four digits, store them on the channel."""
    await call.command(commands.answer())
    data = await call.command(commands.get_data("enter-number", 5000, 4))
    await asyncio.sleep(0)
    await call.command(commands.set_variable("CASE_INPUT", data.digits or ""))


def _good_peers(count: int, tag: int = 0) -> list[ScriptedAsterisk]:
    return [
        ScriptedAsterisk(script="intake", dtmf=f"{i:04d}", env={"uniqueid": f"{tag}.{i}"})
        for i in range(count)
    ]


def _assert_good(transcripts: list[CallTranscript]) -> None:
    for i, transcript in enumerate(transcripts):
        assert transcript.variables["CASE_INPUT"] == f"{i:04d}"
        assert transcript.argvs[0] == ["ANSWER"]
        assert transcript.server_closed and not transcript.pipelined and not transcript.bad_lines


async def _together(
    harness: AgiServerHarness, bad: list[ScriptedAsterisk], good: int = 20
) -> tuple[list[CallTranscript], list[CallTranscript]]:
    """Run bad calls in the middle of good ones; return both transcript lists."""
    peers = [*bad, *_good_peers(good, tag=len(bad))]
    transcripts = await asyncio.gather(*(peer.run("127.0.0.1", harness.port) for peer in peers))
    await harness.drain()
    return list(transcripts[: len(bad)]), list(transcripts[len(bad) :])


# ---- whole calls --------------------------------------------------------------------------


async def test_happy_path_call_sends_what_the_reference_probe_sent(
    agi_server: AgiServerHarness, agi_logs: list[EventDict]
) -> None:
    """The 1a dialogue written with our builders: Asterisk would read the same argv,
    and each result comes back typed, through a hangup and the dead-channel phase."""
    seen: dict[str, AgiResult | AgiCall] = {}

    async def hotline(call: AgiCall) -> None:
        seen["call"] = call
        await call.command(commands.answer())
        await call.command(commands.stream_file("silence/1"))
        seen["data"] = await call.command(commands.get_data("beep", 8000, 4))
        seen["digit"] = await call.command(commands.wait_for_digit(6000))
        seen["stream"] = await call.command(commands.stream_file("hello-world", "0123456789*#"))
        seen["record"] = await call.command(
            commands.record_file(RECORDING, "wav", "#", 8000, beep=True, silence_s=4)
        )
        await call.command(commands.set_variable("IVR_RESULT", "12"))
        seen["var"] = await call.command(commands.get_variable("IVR_RESULT"))
        seen["missing"] = await call.command(commands.get_variable("NO_SUCH_VAR"))
        seen["channel"] = await call.command(commands.get_full_variable("${CHANNEL}"))
        seen["status"] = await call.command(commands.channel_status())
        await call.command(commands.say_digits("42"))
        await call.command(commands.verbose("hello from fastagi probe", 1))
        await call.command(commands.hangup())
        for dead_only in (commands.stream_file("beep"), commands.get_data("beep", 1000, 1)):
            with pytest.raises(AgiDeadChannel):
                await call.command(dead_only)
        seen["after"] = await call.command(commands.get_variable("IVR_RESULT"))
        await call.command(commands.set_variable("AFTER_HANGUP", "yes"))
        with pytest.raises(AgiHangup):
            await call.command(commands.channel_status())

    agi_server.start({"hotline": hotline})
    peer = ScriptedAsterisk(dtmf="12#59#", env={"agi_arg_1": "first arg", "agi_arg_2": "second"})
    transcript = await agi_server.call(peer)

    reference = next(s for s in load_reference_sessions() if s.name == "1a-c4")
    assert transcript.argvs == [split_agi_args(line.decode()[:-1]) for line in reference.outbound]
    assert transcript.server_closed and not transcript.pipelined and not transcript.bad_lines
    assert transcript.dialogue[0] == ("<<", b"agi_network: yes\n")
    assert transcript.dialogue[-1] == (
        "<<",
        b"511 Command Not Permitted on a dead channel or intercept routine\n",
    )
    call = seen["call"]
    assert isinstance(call, AgiCall)
    assert call.request.args == ("first arg", "second") and call.hung_up
    results = {key: value for key, value in seen.items() if isinstance(value, AgiResult)}
    assert results["data"].digits == "12"
    assert results["digit"].digit == "5"
    assert results["stream"].digit == "9"
    assert (results["record"].digit, results["record"].data, results["record"].endpos) == (
        "#",
        "dtmf",
        9760,
    )
    assert results["var"].data == "12" and results["missing"].result == "0"
    assert results["channel"].data == transcript.env["agi_channel"]
    assert results["status"].number == 6
    assert results["after"].data == "12"
    assert transcript.variables["AFTER_HANGUP"] == "yes"
    assert transcript.recordings == [RECORDING]

    started = _events(agi_logs, "agi.call_started")
    assert started and started[0]["call_id"] == transcript.env["agi_uniqueid"]
    assert started[0]["callerid"] == "050****4567"
    assert _events(agi_logs, "agi.call_finished")[0]["call_id"] == transcript.env["agi_uniqueid"]
    assert "0501234567" not in repr(agi_logs)


async def test_300_concurrent_calls_each_complete(agi_server: AgiServerHarness) -> None:
    """Three hundred callers at once; each handler sees only its own keys and variables."""
    results: dict[str, str | None] = {}

    async def recording_intake(call: AgiCall) -> None:
        await intake(call)
        result = await call.command(commands.get_variable("CASE_INPUT"))
        results[call.call_id] = result.data

    agi_server.start({"intake": recording_intake})
    peers = _good_peers(300)
    transcripts = await asyncio.gather(*(peer.run("127.0.0.1", agi_server.port) for peer in peers))
    await agi_server.drain()
    _assert_good(list(transcripts))
    assert results == {f"0.{i}": f"{i:04d}" for i in range(300)}
    assert agi_server.factory is not None and agi_server.factory.active_calls == 0


async def test_query_string_is_not_part_of_the_route(agi_server: AgiServerHarness) -> None:
    """`AGI(agi://host/errors?foo=bar&x=1)` goes to the `errors` route with its query."""
    seen: list[dict[str, str]] = []

    async def errors(call: AgiCall) -> None:
        seen.append(call.request.query)

    agi_server.start({"/errors": errors})
    transcript = await agi_server.call(ScriptedAsterisk(script="errors?foo=bar&x=1"))
    assert seen == [{"foo": "bar", "x": "1"}]
    assert transcript.commands == [] and transcript.server_closed


async def test_handler_can_close_early(agi_server: AgiServerHarness) -> None:
    """close() ends the session; the dialplan would continue after AGI()."""

    async def short(call: AgiCall) -> None:
        await call.command(commands.answer())
        call.close()
        with pytest.raises(AgiHangup):
            await call.command(commands.verbose("never sent"))

    agi_server.start({"short": short})
    transcript = await agi_server.call(ScriptedAsterisk(script="short"))
    assert transcript.commands == ["ANSWER"] and transcript.server_closed


async def test_errors_510_and_520_raise_and_the_call_goes_on(agi_server: AgiServerHarness) -> None:
    outcome: list[object] = []

    async def errors(call: AgiCall) -> None:
        with pytest.raises(AgiInvalidCommand):
            await call.command("FOO BAR")
        with pytest.raises(AgiUsageError) as usage:
            await call.command("GET DATA")
        outcome.append(usage.value.usage)
        outcome.append((await call.command(commands.exec_application("NoSuchApp", "foo"))).number)
        outcome.append((await call.command(commands.stream_file("no-such-file"))).failed)

    agi_server.start({"errors": errors})
    await agi_server.call(ScriptedAsterisk(script="errors", missing_files={"no-such-file"}))
    assert "GET DATA" in str(outcome[0])
    assert outcome[1:] == [-2, True]


async def test_two_commands_at_once_are_refused_not_pipelined(agi_server: AgiServerHarness) -> None:
    """A handler that forgets to await gets AgiLocalProtocolError; Asterisk sees one line."""
    errors: list[BaseException] = []

    async def racy(call: AgiCall) -> None:
        first = asyncio.ensure_future(call.command(commands.answer()))
        await asyncio.sleep(0)
        try:
            await call.command(commands.verbose("second"))
        except AgiLocalProtocolError as exc:
            errors.append(exc)
        await first

    agi_server.start({"racy": racy})
    transcript = await agi_server.call(ScriptedAsterisk(script="racy"))
    assert len(errors) == 1 and "in flight" in str(errors[0])
    assert transcript.commands == ["ANSWER"] and not transcript.pipelined


# ---- hang-ups -----------------------------------------------------------------------------


async def test_caller_hangs_up_during_get_data(agi_server: AgiServerHarness) -> None:
    """Transcript 2: result=-1, a HANGUP line, then 511 for channel commands; SET VARIABLE works."""
    seen: dict[str, object] = {}

    async def callerhup(call: AgiCall) -> None:
        await call.command(commands.answer())
        result = await call.command(commands.get_data("beep", 10000, 4))
        seen["failed"] = result.failed
        with pytest.raises(AgiDeadChannel):
            await call.command(commands.wait_for_digit(1000))
        seen["hung_up"] = call.hung_up
        await call.command(commands.set_variable("AFTER_HANGUP", "yes"))
        with pytest.raises(AgiDeadChannel):
            await call.command(commands.hangup())

    agi_server.start({"callerhup": callerhup})
    transcript = await agi_server.call(ScriptedAsterisk(script="callerhup", hangup_after=1))
    assert seen == {"failed": True, "hung_up": True}
    assert transcript.variables["AFTER_HANGUP"] == "yes"
    assert [argv[0] for argv in transcript.argvs] == ["ANSWER", "GET", "WAIT", "SET", "HANGUP"]


async def test_without_agisighup_511_alone_marks_the_hangup(agi_server: AgiServerHarness) -> None:
    """Transcript 8b: no HANGUP line ever; the 511 still raises AgiDeadChannel."""
    flags: list[bool] = []

    async def callerhup(call: AgiCall) -> None:
        await call.command(commands.answer())
        await call.command(commands.get_data("beep", 10000, 4))
        flags.append(call.hung_up)
        with pytest.raises(AgiDeadChannel):
            await call.command(commands.wait_for_digit(1000))
        flags.append(call.hung_up)

    agi_server.start({"callerhup": callerhup})
    transcript = await agi_server.call(
        ScriptedAsterisk(script="callerhup", hangup_after=1, sighup=False)
    )
    assert flags == [False, True]
    assert not any(
        line == b"HANGUP\n" for direction, line in transcript.dialogue if direction == "<<"
    )


async def test_agiexitonhangup_closes_under_a_pending_command(
    agi_server: AgiServerHarness, agi_logs: list[EventDict]
) -> None:
    """Transcript 8c: HANGUP twice and the socket closes; the pending command raises AgiHangup."""
    raised: list[BaseException] = []

    async def callerhup(call: AgiCall) -> None:
        await call.command(commands.answer())
        await call.command(commands.get_data("beep", 10000, 4))
        try:
            await call.command(commands.wait_for_digit(1000))
        except AgiHangup as exc:
            raised.append(exc)
            raise

    agi_server.start({"callerhup": callerhup})
    await agi_server.call(ScriptedAsterisk(script="callerhup", hangup_after=1, exit_on_hangup=True))
    assert len(raised) == 1 and not isinstance(raised[0], AgiDeadChannel)
    assert _events(agi_logs, "agi.call_hung_up")


async def test_peer_disconnecting_mid_command_raises_agihangup_and_others_go_on(
    agi_server: AgiServerHarness, agi_logs: list[EventDict]
) -> None:
    """The connection drops while GET DATA is pending: that call ends, the others finish."""
    raised: list[BaseException] = []

    async def flaky(call: AgiCall) -> None:
        await call.command(commands.answer())
        try:
            await call.command(commands.get_data("enter-number", 5000, 4))
        except AgiHangup as exc:
            raised.append(exc)
            raise

    agi_server.start({"intake": intake, "flaky": flaky})
    bad, good = await _together(
        agi_server, [ScriptedAsterisk(script="flaky", on_command=[None, DISCONNECT])]
    )
    _assert_good(good)
    assert len(raised) == 1 and call_id_of(bad[0]) in {
        e.get("call_id") for e in _events(agi_logs, "agi.closed_mid_command")
    }
    assert _events(agi_logs, "agi.call_hung_up")[0]["call_id"] == call_id_of(bad[0])


def call_id_of(transcript: CallTranscript) -> str:
    return transcript.env["agi_uniqueid"]


# ---- failures stay inside their call ------------------------------------------------------


async def test_handler_exception_is_logged_and_closes_only_that_call(
    agi_server: AgiServerHarness, agi_logs: list[EventDict]
) -> None:
    async def boom(call: AgiCall) -> None:
        await call.command(commands.answer())
        raise RuntimeError("case service exploded")

    agi_server.start({"intake": intake, "boom": boom})
    bad, good = await _together(agi_server, [ScriptedAsterisk(script="boom")])
    _assert_good(good)
    assert bad[0].commands == ["ANSWER"] and bad[0].server_closed
    failed = _events(agi_logs, "agi.handler_failed")
    assert len(failed) == 1
    assert failed[0]["call_id"] == call_id_of(bad[0])
    assert failed[0]["log_level"] == "error" and failed[0]["exc_info"]


async def test_unknown_route_says_so_and_hangs_up_the_session(
    agi_server: AgiServerHarness, agi_logs: list[EventDict]
) -> None:
    agi_server.start({"intake": intake})
    transcript = await agi_server.call(ScriptedAsterisk(script="nowhere?x=1"))
    assert transcript.argvs == [["VERBOSE", "callcenter: no FastAGI route for 'nowhere'", "1"]]
    assert transcript.server_closed
    unknown = _events(agi_logs, "agi.unknown_route")
    assert unknown[0]["script"] == "nowhere" and unknown[0]["call_id"] == call_id_of(transcript)


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (
            ScriptedAsterisk(env_bytes=b"GET / HTTP/1.1\r\nHost: callcenter\r\n\r\n"),
            "not an agi_* environment line",
        ),
        (ScriptedAsterisk(flood_env=True), "more than 256 lines"),
        (ScriptedAsterisk(env_bytes=b"agi_network: yes\n" + b"A" * 20_000), "without a newline"),
        (
            ScriptedAsterisk(script="intake", on_command=["200 result=0\n200 result=0"]),
            "no command in flight",
        ),
        (ScriptedAsterisk(script="intake", on_command=[None, "200 bogus"]), "without result="),
        (
            ScriptedAsterisk(script="intake", on_command=[b"\xff\xfe garbage\n"]),
            "not an AGI response line",
        ),
    ],
    ids=[
        "http-request",
        "endless-env",
        "endless-line",
        "unsolicited",
        "bad-result",
        "binary-result",
    ],
)
async def test_garbage_ends_that_call_with_a_log_line(
    agi_server: AgiServerHarness, agi_logs: list[EventDict], peer: ScriptedAsterisk, expected: str
) -> None:
    """A peer that does not speak AGI is cut off with one warning; good calls carry on."""
    agi_server.start({"intake": intake})
    bad, good = await _together(agi_server, [peer])
    _assert_good(good)
    assert bad[0].server_closed and not bad[0].timed_out
    assert bad[0].env_bytes_sent < 8 * 1024 * 1024  # the server cut it off, not the peer's cap
    errors = _events(agi_logs, "agi.protocol_error")
    assert len(errors) == 1 and expected in errors[0]["error"]
    assert errors[0]["log_level"] == "warning"


async def test_silent_peer_is_dropped_after_the_env_timeout(
    agi_server: AgiServerHarness, agi_logs: list[EventDict]
) -> None:
    """A connection that never sends its env block does not hold a slot for ever."""
    agi_server.start({"intake": intake}, env_timeout=0.3)
    bad, good = await _together(agi_server, [ScriptedAsterisk(env_bytes=b"agi_network: yes\n")])
    _assert_good(good)
    assert bad[0].server_closed and not bad[0].timed_out
    assert _events(agi_logs, "agi.env_timeout")


async def test_peer_closing_before_the_env_block_is_logged(
    agi_server: AgiServerHarness, agi_logs: list[EventDict]
) -> None:
    agi_server.start({"intake": intake})
    _, writer = await asyncio.open_connection("127.0.0.1", agi_server.port)
    writer.write(b"agi_network: yes\n")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    for _ in range(200):
        if _events(agi_logs, "agi.closed_before_env"):
            break
        await asyncio.sleep(0.01)
    assert _events(agi_logs, "agi.closed_before_env")[0]["unparsed_bytes"] == 0


async def test_limits_reach_the_connection(
    agi_server: AgiServerHarness, agi_logs: list[EventDict]
) -> None:
    agi_server.start({"intake": intake}, limits=AgiLimits(max_env_lines=5))
    transcript = await agi_server.call(ScriptedAsterisk(script="intake"))
    assert transcript.commands == [] and transcript.server_closed
    assert "more than 5 lines" in _events(agi_logs, "agi.protocol_error")[0]["error"]


# ---- the reactor ---------------------------------------------------------------------------


async def test_install_reactor_is_idempotent_and_bound_to_its_loop(
    reactor: AsyncioSelectorReactor,
) -> None:
    loop = asyncio.get_running_loop()
    assert install_reactor(loop) is reactor
    assert install_reactor(loop) is reactor
    assert reactor.running
    other = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="different event loop"):
            install_reactor(other)
    finally:
        other.close()


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_install_reactor_refuses_another_reactor_kind() -> None:
    """In a fresh process with the select reactor installed first, the helper raises."""
    done = await asyncio.to_thread(
        _run_python,
        """
        import asyncio
        from twisted.internet import selectreactor
        selectreactor.install()
        from callcenter.runtime import install_reactor
        try:
            install_reactor(asyncio.new_event_loop())
        except RuntimeError as exc:
            print("refused:", exc)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "refused: a SelectReactor reactor is already installed" in done.stdout


async def test_install_reactor_in_a_fresh_process_runs_a_call() -> None:
    """asyncio.run(), install_reactor, serve one call, use the thread pool, and exit:
    nothing (such as a non-daemon pool thread) keeps the process alive afterwards."""
    done = await asyncio.to_thread(
        _run_python,
        """
        import asyncio
        from callcenter.runtime import install_reactor
        from callcenter.agi.server import start_agi_server
        from callcenter.agi import commands
        from twisted.internet.threads import deferToThread

        async def main():
            reactor = install_reactor(asyncio.get_running_loop())
            assert install_reactor(asyncio.get_running_loop()) is reactor
            async def hello(call):
                print("result:", (await call.command(commands.answer())).raw)
            port = start_agi_server(reactor, "127.0.0.1", 0, {"hello": hello})
            reader, writer = await asyncio.open_connection("127.0.0.1", port.getHost().port)
            writer.write(b"agi_network: yes\\nagi_network_script: hello\\nagi_uniqueid: 9.9\\n\\n")
            assert await reader.readline() == b"ANSWER\\n"
            writer.write(b"200 result=0\\n")
            assert await reader.read() == b""
            writer.close()
            await port.factory.drain()
            await port.stopListening().asFuture(asyncio.get_running_loop())
            print("thread:", await deferToThread(lambda: 42).asFuture(asyncio.get_running_loop()))
            print("done")

        asyncio.run(main())
        """,
    )
    assert done.returncode == 0, done.stderr
    printed = [
        line for line in done.stdout.splitlines() if not line.startswith("20")
    ]  # not log lines
    assert printed == ["result: 200 result=0", "thread: 42", "done"]


async def test_start_agi_server_needs_the_asyncio_reactor() -> None:
    async def noop(call: AgiCall) -> None:
        return None

    with pytest.raises(TypeError, match="asyncio reactor"):
        start_agi_server(MemoryReactor(), "127.0.0.1", 0, {"x": noop})  # type: ignore[arg-type]


async def test_routes_with_a_query_string_are_refused() -> None:
    from callcenter.agi.server import AgiServerFactory

    async def noop(call: AgiCall) -> None:
        return None

    with pytest.raises(ValueError, match="query string"):
        AgiServerFactory({"errors?x=1": noop}, reactor=None)  # type: ignore[arg-type]
