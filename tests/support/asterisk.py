"""A real Asterisk 22 for the tests, running the project's own `config/asterisk/` files.

`find_asterisk()` looks for an install: `ASTERISK_PREFIX`, else the shared peer's
installer (`../shared/peers/asterisk/install.sh`, unpacked into a cache folder), and says
why when there is none. `AsteriskPeer` copies `config/asterisk/*.conf` into a per-session
folder changing only ports and paths (SIP, AMI and RTP on free loopback ports, the FastAGI
nodes on 127.0.0.1, the recording folder, the run folder), adds a test-only `[test-caller]`
context in its own file, starts `asterisk -f`, waits until it is fully booted and stops it.

The citizen is the `;2` half of a Local channel: a call file (for its caller ID) dials
`Local/s@test-caller/n` and sends the `;1` half into `[hotline]`. The caller half reads
its part from `CALLER_SCRIPT`, steps separated by `|`:

    w2.5     Wait(2.5)             d1#      SendDTMF(1#)
    p/x/y    Playback(/x/y)        h        hang up now

After the last step the caller waits (listens) until the hotline hangs up. Keys sent
with SendDTMF reach the IVR as DTMF frames, audio played by the caller is what RECORD
FILE records: the same path a phone call takes after its codec.

Nothing here fakes Asterisk: it is the real binary with the real dialplan; tests drive it
from outside, the way the carrier and a citizen would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_CONFIG = REPO_ROOT / "config" / "asterisk"


def shared_dir() -> Path:
    """`../shared` beside the project ($CALLCENTER_SHARED_DIR wins); a git worktree one level
    deeper (/work/wt/<branch>) finds it one folder further up."""
    explicit = os.environ.get("CALLCENTER_SHARED_DIR")
    if explicit:
        return Path(explicit)
    for parent in REPO_ROOT.parents[:2]:
        if (parent / "shared").is_dir():
            return parent / "shared"
    return REPO_ROOT.parent / "shared"


CONFIG_FILES = ("extensions.conf", "pjsip.conf", "manager.conf", "queues.conf", "rtp.conf")
BOOT_TIMEOUT = 60.0
CALLER_CONTEXT = "test-caller"
# What the test caller's script may contain; checked so a test cannot inject dialplan.
_STEP = re.compile(r"(w\d+(\.\d+)?|d[0-9*#A-D]+|p[\w/.\-]+|h)")


class AsteriskUnavailable(RuntimeError):
    """No Asterisk could be found or installed; the message says why and how to fix it."""


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asterisk-peer"


def find_asterisk() -> Path:
    """The install prefix of an Asterisk 22 (has `sbin/asterisk`), or AsteriskUnavailable."""
    explicit = os.environ.get("ASTERISK_PREFIX")
    if explicit:
        prefix = Path(explicit)
        if not (prefix / "sbin" / "asterisk").is_file():
            raise AsteriskUnavailable(f"ASTERISK_PREFIX={explicit} has no sbin/asterisk")
        return prefix
    peer_dir = shared_dir() / "peers" / "asterisk"
    installer = peer_dir / "install.sh"
    if not installer.is_file():
        raise AsteriskUnavailable(
            f"no Asterisk: set ASTERISK_PREFIX or provide the shared peer at {peer_dir} "
            "(scripts/test installs it from there)")
    try:
        done = subprocess.run(["bash", str(installer), str(cache_dir())], capture_output=True,
                              text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AsteriskUnavailable(f"{installer} failed: {exc}") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise AsteriskUnavailable(f"{installer} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    prefix = Path(lines[-1])
    if not (prefix / "sbin" / "asterisk").is_file():
        raise AsteriskUnavailable(f"{installer} printed {prefix}, which has no sbin/asterisk")
    return prefix


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_rtp_range(size: int = 400) -> tuple[int, int]:
    """An even start port whose range looks free now (several Asterisks may run side by side)."""
    for _ in range(50):
        start = 20000 + 2 * (int.from_bytes(os.urandom(2), "big") % 10000)
        probe = [start, start + size // 2, start + size - 2]
        if all(_udp_free(port) for port in probe):
            return start, start + size - 1
    raise AsteriskUnavailable("no free RTP port range between 20000 and 40000")


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _set_option(text: str, section: str, key: str, value: str) -> str:
    """Replace `key = ...` inside `[section]` of an Asterisk .conf text (must exist once)."""
    pattern = re.compile(
        rf"(^\[{re.escape(section)}\][^\n]*\n(?:(?!^\[).*\n)*?){re.escape(key)}\s*=[^\n]*", re.M)
    replaced, count = pattern.subn(lambda m: f"{m.group(1)}{key} = {value}", text, count=1)
    if count != 1:
        raise AssertionError(f"[{section}] {key} not found in the project's config")
    return replaced


@dataclass
class Ports:
    sip: int
    ami: int
    rtp: tuple[int, int]

    @classmethod
    def pick(cls) -> Ports:
        return cls(sip=free_port(socket.SOCK_DGRAM), ami=free_port(), rtp=free_rtp_range())


def agi_nodes(ports: Sequence[int]) -> str:
    """The dialplan's CALLCENTER_AGI_NODES for FastAGI listeners on 127.0.0.1."""
    return "&".join(f"127.0.0.1:{port}" for port in ports)


def caller_dialplan() -> str:
    """The test-only citizen: interprets CALLER_SCRIPT (see the module docstring)."""
    return f"""; test-only: the citizen's half of a Local channel (tests/support/asterisk.py)
[{CALLER_CONTEXT}]
exten => s,1,NoOp(CALL_TAG=${{CALL_TAG}} on ${{CHANNEL}})
 same => n,Answer()
 same => n,Set(STEP_INDEX=1)
 same => n(next),Set(STEP=${{CUT(CALLER_SCRIPT,|,${{STEP_INDEX}})}})
 same => n,GotoIf($["${{STEP}}" = ""]?listen)
 same => n,Set(STEP_INDEX=$[${{STEP_INDEX}} + 1])
 same => n,Set(ARG=${{STEP:1}})
 same => n,GotoIf($["${{STEP:0:1}}" = "w"]?wait)
 same => n,GotoIf($["${{STEP:0:1}}" = "d"]?dtmf)
 same => n,GotoIf($["${{STEP:0:1}}" = "p"]?play)
 same => n,GotoIf($["${{STEP:0:1}}" = "h"]?hangup)
 same => n,Goto(next)
 same => n(wait),Wait(${{ARG}})
 same => n,Goto(next)
 same => n(dtmf),SendDTMF(${{ARG}})
 same => n,Goto(next)
 same => n(play),Playback(${{ARG}})
 same => n,Goto(next)
 same => n(listen),Wait(${{CALLER_LISTEN}})
 same => n(hangup),Hangup()

; a citizen the service calls back (AMI Originate Local/<number>@test-citizen/n): a number
; ending in 2 is busy, in 3 rings and never answers; others answer and run CITIZEN_SCRIPT
; (a global the test sets) as test-caller does
[test-citizen]
exten => _X.,1,GotoIf($["${{EXTEN:-1}}" = "2"]?busy)
 same => n,GotoIf($["${{EXTEN:-1}}" = "3"]?ring)
 same => n,Set(CALLER_SCRIPT=${{CITIZEN_SCRIPT}})
 same => n,Set(CALLER_LISTEN=30)
 same => n,Goto({CALLER_CONTEXT},s,1)
 same => n(busy),Busy(5)
 same => n(ring),Ringing()
 same => n,Wait(120)

; a carrier trunk as a real one behaves (Local/<number>@test-carrier/n): it tells the caller
; who answered (a connected-line update, as a carrier's P-Asserted-Identity does), then the
; citizen of test-citizen takes the call
[test-carrier]
exten => _X.,1,Set(CONNECTEDLINE(num)=${{EXTEN}})
 same => n,Goto(test-citizen,${{EXTEN}},1)

; a staff member's phone as a queue member (Local/agent@test-agent): answers and talks
[test-agent]
exten => agent,1,NoOp(AGENT_ANSWERS case=${{CALLCENTER_CASE_NUMBER}} on ${{CHANNEL}})
 same => n,Answer()
 same => n,Wait(${{IF($["${{AGENT_TALK}}" = ""]?3:${{AGENT_TALK}})}})
 same => n,Hangup()
"""


@dataclass
class AsteriskPeer:
    """One Asterisk process with the project's dialplan. `start()`, then `stop()`."""

    prefix: Path
    root: Path
    agi_port: int = 4573
    ports: Ports = field(default_factory=Ports.pick)
    recording_dir: Path | None = None
    # Sound folders Asterisk finds under its sounds root: {"callcenter/zh": built prompts}.
    sounds: Mapping[str, Path] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def spool(self) -> Path:
        return self.run_dir / "spool" / "outgoing"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "full.log"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": str(self.prefix / "lib")}

    # ---- configuration

    def write_config(self) -> None:
        """config/asterisk/*.conf with only ports and paths changed, plus the test files."""
        self.etc.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "spool" / "outgoing").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "spool" / "tmp").mkdir(parents=True, exist_ok=True)
        recordings = self.recording_dir or self.root / "recordings"
        recordings.mkdir(parents=True, exist_ok=True)
        self.recording_dir = recordings
        texts = {name: (PROJECT_CONFIG / name).read_text(encoding="utf-8") for name in CONFIG_FILES}

        ext = texts["extensions.conf"]
        ext = _set_option(ext, "globals", "CALLCENTER_AGI_NODES", agi_nodes([self.agi_port]))
        ext = _set_option(ext, "globals", "CALLCENTER_RECORDING_DIR", str(recordings))
        texts["extensions.conf"] = ext + '\n#include "test-caller.conf"\n'

        texts["pjsip.conf"] = _set_option(texts["pjsip.conf"], "transport-udp", "bind",
                                          f"127.0.0.1:{self.ports.sip}")
        manager = _set_option(texts["manager.conf"], "general", "port", str(self.ports.ami))
        texts["manager.conf"] = _set_option(manager, "general", "bindaddr", "127.0.0.1")
        rtp = _set_option(texts["rtp.conf"], "general", "rtpstart", str(self.ports.rtp[0]))
        texts["rtp.conf"] = _set_option(rtp, "general", "rtpend", str(self.ports.rtp[1]))
        for name, text in texts.items():
            (self.etc / name).write_text(text, encoding="utf-8")
        (self.etc / "test-caller.conf").write_text(caller_dialplan(), encoding="utf-8")

        self._data_dir()
        (self.etc / "asterisk.conf").write_text(f"""[directories]
astetcdir => {self.etc}
astmoddir => {self.prefix}/lib/asterisk/modules
astvarlibdir => {self.prefix}/var/lib/asterisk
astdbdir => {self.run_dir}
astkeydir => {self.prefix}/var/lib/asterisk
astdatadir => {self.data_dir}
astagidir => {self.prefix}/var/lib/asterisk/agi-bin
astspooldir => {self.run_dir}/spool
astrundir => {self.run_dir}
astlogdir => {self.run_dir}
astsbindir => {self.prefix}/sbin

[options]
verbose = 3
defaultlanguage = en
hideconnect = yes
""", encoding="utf-8")
        (self.etc / "logger.conf").write_text(
            "[general]\ndateformat = %F %T.%3q\n\n[logfiles]\n"
            "full.log => notice,warning,error,verbose(4),dtmf\n", encoding="utf-8")
        # Modules a hotline test does not use (and that only slow the boot or log noise).
        noload = ("chan_audiosocket", "res_audiosocket", "chan_websocket", "res_hep", "res_hep_pjsip",
                  "res_hep_rtcp", "cdr_custom", "cdr_manager", "cdr_sqlite3_custom", "cdr_csv",
                  "res_phoneprov", "res_pjsip_phoneprov_provider", "res_smdi", "res_config_sqlite3",
                  "res_statsd", "res_calendar", "app_voicemail", "chan_mobile", "res_ari",
                  "res_stasis_recording", "res_stasis_playback", "pbx_dundi")
        (self.etc / "modules.conf").write_text(
            "[modules]\nautoload = yes\n" + "".join(f"noload => {m}.so\n" for m in noload), encoding="utf-8")

    def _data_dir(self) -> None:
        """The install's data folder, linked entry by entry, with our sounds under sounds/:
        the dialplan's `callcenter/zh/<id>` names then resolve as they do in production."""
        shipped = self.prefix / "var" / "lib" / "asterisk"
        (self.data_dir / "sounds").mkdir(parents=True, exist_ok=True)
        for entry in shipped.iterdir():
            target = self.data_dir / entry.name
            if entry.name != "sounds" and not target.exists():
                target.symlink_to(entry)
        for name, folder in self.sounds.items():
            link = self.data_dir / "sounds" / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(folder.resolve())

    # ---- process

    def start(self) -> None:
        self.write_config()
        out = (self.run_dir / "stdout.log").open("wb")
        self.process = subprocess.Popen(
            [str(self.prefix / "sbin" / "asterisk"), "-C", str(self.etc / "asterisk.conf"), "-f", "-n"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
        out.close()
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AsteriskUnavailable(f"asterisk exited with {self.process.returncode} during boot: "
                                          f"{self.tail()}")
            done = self._cli_run("core waitfullybooted", timeout=max(1.0, deadline - time.monotonic()))
            if done is not None and done.returncode == 0 and "fully booted" in done.stdout.lower():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise AsteriskUnavailable(f"asterisk did not boot within {BOOT_TIMEOUT}s: {self.tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        self._cli_run("core stop now", timeout=10)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def tail(self, lines: int = 40) -> str:
        for path in (self.log_file, self.run_dir / "stdout.log"):
            if path.exists() and path.stat().st_size:
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def _cli_run(self, command: str, timeout: float = 10) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                [str(self.prefix / "sbin" / "asterisk"), "-C", str(self.etc / "asterisk.conf"), "-rx", command],
                env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return None

    def cli(self, command: str, timeout: float = 10) -> str:
        """One CLI command over the control socket (`asterisk -rx`); its output."""
        done = self._cli_run(command, timeout)
        if done is None or done.returncode != 0:
            raise RuntimeError(f"asterisk -rx {command!r} failed: {done and done.stderr}")
        return done.stdout

    async def acli(self, command: str, timeout: float = 10) -> str:
        return await asyncio.to_thread(self.cli, command, timeout)

    # ---- calls

    def call(self, script: str = "", *, callerid: str | None = "13812345678", tag: str | None = None,
             context: str = "hotline", extension: str = "s", listen: float = 90,
             variables: Mapping[str, str] | None = None) -> str:
        """Place one call with a call file; returns its tag (the caller ID name the IVR sees).

        `script` is the citizen's part (module docstring); `callerid` None is a withheld number.
        """
        steps = [s for s in script.split("|") if s]
        for step in steps:
            if not _STEP.fullmatch(step):
                raise ValueError(f"bad caller step {step!r}")
        tag = tag or f"t{uuid.uuid4().hex[:10]}"
        lines = [
            f"Channel: Local/s@{CALLER_CONTEXT}/n",
            f"Context: {context}",
            f"Extension: {extension}",
            "Priority: 1",
            "MaxRetries: 0",
            "WaitTime: 30",
            f"Setvar: CALLER_SCRIPT={'|'.join(steps)}",
            f"Setvar: CALLER_LISTEN={listen:g}",
            f"Setvar: CALL_TAG={tag}",
        ]
        lines.append(f'CallerID: "{tag}" <{callerid}>' if callerid else f'CallerID: "{tag}" <>')
        for name, value in (variables or {}).items():
            lines.append(f"Setvar: {name}={value}")
        scratch = self.run_dir / "spool" / "tmp" / f"{tag}.call"
        scratch.write_text("\n".join(lines) + "\n", encoding="utf-8")
        # Same filesystem: the rename is atomic, so pbx_spool never reads half a file.
        os.replace(scratch, self.spool / f"{tag}.call")
        return tag

    def active_channels(self) -> int:
        out = self.cli("core show channels count")
        match = re.search(r"(\d+) active channels?", out)
        return int(match.group(1)) if match else 0

    async def wait_idle(self, timeout: float = 120.0) -> None:
        """Until no channel is up and no call file is waiting (every call has ended)."""
        deadline = time.monotonic() + timeout
        while True:
            pending = list(self.spool.glob("*.call"))
            channels = await asyncio.to_thread(self.active_channels)
            if not pending and channels == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {channels} channel(s), {len(pending)} call file(s) after "
                                   f"{timeout}s:\n{self.tail()}")
            await asyncio.sleep(0.25)

    def channel_of(self, tag: str) -> str | None:
        """The Local channel's base name (`Local/s@test-caller-0000000a`) of a placed call."""
        match = re.search(rf"CALL_TAG={re.escape(tag)} on (Local/[^;\s]+);2", self.log_since(0))
        return match.group(1) if match else None

    def log_of(self, tag: str) -> str:
        """The lines of Asterisk's full log about one call (both halves of its Local channel)."""
        channel = self.channel_of(tag)
        if channel is None:
            return ""
        return "\n".join(line for line in self.log_since(0).splitlines() if channel + ";" in line)

    async def set_global(self, name: str, value: str) -> None:
        await self.acli(f"dialplan set global {name} {value}")

    async def set_agi_nodes(self, ports: Sequence[int], *, first: int = 0) -> None:
        """Point the dialplan at these FastAGI ports on 127.0.0.1; the next call starts on
        `ports[first]` (the round-robin turn is the index of the previous start)."""
        await self.set_global("CALLCENTER_AGI_NODES", agi_nodes(ports))
        await self.set_global("CALLCENTER_AGI_TURN", str((first - 1) % len(ports)))

    def agi_ports_tried(self, tag: str, script: str = "hotline") -> list[int]:
        """The FastAGI ports Asterisk connected (or tried to) for one call's `script`, in order."""
        return [int(port) for port in re.findall(
            rf'AGI\("[^"]*", "agi://127\.0\.0\.1:(\d+)/{re.escape(script)}"\)', self.log_of(tag))]

    def log_since(self, offset: int) -> str:
        with self.log_file.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")

    def log_offset(self) -> int:
        return self.log_file.stat().st_size if self.log_file.exists() else 0


@contextlib.contextmanager
def running_asterisk(prefix: Path, root: Path, **options: object) -> Iterator[AsteriskPeer]:
    peer = AsteriskPeer(prefix=prefix, root=root, **options)  # type: ignore[arg-type]
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def asterisk_or_skip() -> Path:
    """The prefix; outside CI a missing Asterisk skips (saying why), in CI it fails."""
    import pytest

    try:
        return find_asterisk()
    except AsteriskUnavailable as exc:
        if is_ci():
            pytest.fail(f"{exc}; CI=true, refusing to skip the real-Asterisk tests", pytrace=False)
        pytest.skip(f"real Asterisk not available: {exc}")


def which(tool: str) -> str | None:
    return shutil.which(tool)
