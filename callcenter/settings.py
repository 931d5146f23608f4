"""One typed settings object for the whole service.

Loaded once in the composition root from `config/callcenter.toml` (or `--config PATH`),
then overridden key by key from `CALLCENTER_<SECTION>__<KEY>` environment variables.
Nothing else in the code base reads the environment or the config files.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "config"
DEFAULT_CONFIG_FILE = CONFIG_DIR / "callcenter.toml"
ENV_PREFIX = "CALLCENTER_"


class SettingsError(ValueError):
    """A settings problem, with the offending key named so start-up can say what to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/callcenter.db"
    echo: bool = False
    pool_size: int = Field(default=10, ge=1, le=500)
    # PostgreSQL ends a session of ours left idle inside a transaction this long (0: never).
    # A node stopped mid-transaction (a stalled VM, SIGSTOP) would otherwise hold its row locks,
    # and every other node's writes to those rows would wait until it woke.
    idle_in_transaction_timeout: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value


class NodeSettings(_Section):
    """[node]: this service process among several sharing one store (issue 11).

    `id` names the node in outbox leases, heartbeats, /healthz and the metrics. Empty means
    host name + HTTP port; two processes on one host must then use different ports or ids.
    See docs/multi-node.md.
    """

    id: str = Field(default="", max_length=64)
    # Heartbeat row in `cluster_nodes`; a node not seen for `dead_after_seconds` is dead:
    # /healthz stops listing it and its job leases may be taken over.
    heartbeat_seconds: float = Field(default=5.0, gt=0, le=300)
    dead_after_seconds: float = Field(default=20.0, gt=0, le=3600)
    # PostgreSQL only: console events between nodes (LISTEN/NOTIFY). A backstop read of
    # `cluster_events` every `event_poll_seconds` even without a wake-up; rows are kept
    # `event_retention_seconds` for nodes that reconnect.
    event_poll_seconds: float = Field(default=5.0, gt=0, le=300)
    event_retention_seconds: float = Field(default=3600.0, ge=60)
    # Periodic jobs run on one node at a time under a lease this long, renewed every run.
    job_lease_seconds: float = Field(default=30.0, ge=1, le=3600)


class JobSettings(_Section):
    """[jobs]: how often each periodic job runs. Every one runs under a lease, on one node at a
    time whatever the number of nodes (`callcenter/jobs.py`, docs/multi-node.md).
    Rating call-backs poll at `[callback] poll_seconds`."""

    # Supervisor tasks (监督员任务) unanswered for `sms.task_escalation_minutes` go to the shift leader.
    task_escalation_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Outbox messages in doubt: settled by a receipt that proves them, or sent again after `sms.in_doubt_wait`.
    outbox_in_doubt_seconds: float = Field(default=1.0, gt=0, le=3600)
    # Outbox expiry (`smpp.validity_period`) and stored receipts whose part has become known.
    outbox_sweep_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Old buckets of the shared flood/loop windows (`rate_windows`) are deleted.
    rate_windows_prune_seconds: float = Field(default=60.0, gt=0, le=24 * 3600)
    # The cluster's own: old console events and long-gone node rows.
    cluster_housekeeping_seconds: float = Field(default=60.0, gt=0, le=24 * 3600)


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    page_size_max: int = Field(default=200, ge=1, le=10_000)


class AgiSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=4573, ge=0, le=65535)


class CaseSettings(_Section):
    timezone: str = "Asia/Shanghai"
    default_region: str = "CN"
    # Intake numbers are YYMMDD + daily serial + check digit; 5 serial digits -> 99,999 a day.
    serial_digits: int = Field(default=5, ge=3, le=5)


class CatalogueSettings(_Section):
    edition: str = "CJ/T 214-2005"
    files: list[str] = ["config/catalogue/cjt214-2005.toml"]
    extensions: list[str] = []


class GridSettings(_Section):
    files: list[str] = ["config/grids/440307-longgang-sample.csv"]


class MessageSettings(_Section):
    templates: str = "config/templates.toml"
    signature: str = ""


class PromptSettings(_Section):
    source: str = "ivr_scripts/prompts/zh"
    output: str = "var/prompts/zh"
    overrides: str = "ivr_scripts/prompts/zh/recorded"
    asterisk_sounds_dir: str = "/var/lib/asterisk/sounds/callcenter/zh"


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["console", "json"] = "console"
    # When false, phone numbers and message bodies are logged in clear (local debugging only).
    privacy: bool = True


class ConsoleSettings(_Section):
    """Staff console (/console/): sessions, lock-out, queue targets, evaluation rules."""

    # Idle time after which a session ends and the page asks for the password again.
    idle_timeout_minutes: int = Field(default=30, ge=1, le=24 * 60)
    # Wrong passwords in a row that lock an account, and for how long.
    max_failed_logins: int = Field(default=5, ge=1, le=100)
    lockout_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # Set true behind TLS so the session cookie is only ever sent over HTTPS.
    secure_cookies: bool = False
    # Where recording_ref paths of IVR recordings and voicemails are resolved.
    recordings_dir: str = "/var/spool/asterisk/recording/callcenter"
    # A draft waiting longer than this is shown as overdue in the queue.
    queue_target_minutes: int = Field(default=10, ge=1, le=7 * 24 * 60)
    # Duplicate candidates: same category, same or neighbouring grid, created this recently.
    duplicate_window_days: int = Field(default=7, ge=1, le=365)
    # Evaluation: a registered case is due this long after registration (应结案时限).
    closure_deadline_hours: int = Field(default=72, ge=1, le=24 * 365)
    # Roles that see reporters' phone numbers unmasked (staff | shift_leader).
    phone_visible_roles: list[Literal["staff", "shift_leader"]] = ["shift_leader"]
    # How often the console looks for drafts created by other processes (SMS, AGI, API).
    poll_seconds: float = Field(default=2.0, gt=0, le=60)
    # Lifetime of a screen-pop handle (来电句柄, the caller's number sealed for roles that may
    # not see it); each screen-pop answer gives a fresh one.
    pop_ttl_minutes: int = Field(default=60, ge=1, le=24 * 60)


# Retry rules for submit_sm_resp errors: retries allowed and the delay between them.
# Start from Jasmin's submit_error_retrial table; every other status is final.
DEFAULT_SUBMIT_RETRY: dict[str, dict[str, float]] = {
    "ESME_RTHROTTLED": {"attempts": 20, "delay": 30.0},
    "ESME_RMSGQFUL": {"attempts": 5, "delay": 180.0},
    "ESME_RSYSERR": {"attempts": 3, "delay": 60.0},
    "ESME_RINVSCHED": {"attempts": 2, "delay": 300.0},
    "ESME_RX_T_APPN": {"attempts": 3, "delay": 60.0},
}
SMPP_STATUS_NAMES: dict[str, int] = {
    "ESME_RSYSERR": 0x08, "ESME_RMSGQFUL": 0x14, "ESME_RSUBMITFAIL": 0x45, "ESME_RTHROTTLED": 0x58,
    "ESME_RINVSCHED": 0x61, "ESME_RX_T_APPN": 0x64, "ESME_RDELIVERYFAILURE": 0xFE,
    "ESME_RUNKNOWNERR": 0xFF,
}


class SmppSettings(_Section):
    """[smpp]: the SMSC link (SMS 短信网关). An empty host runs the console gateway instead."""

    host: str = ""
    port: int = Field(default=2775, ge=1, le=65535)
    system_id: str = Field(default="", max_length=15)
    password: str = Field(default="", max_length=8)
    system_type: str = Field(default="", max_length=12)
    bind_mode: Literal["trx", "tx+rx"] = "trx"
    # Our service number (特服号), shown to citizens as the sender.
    source_addr: str = Field(default="12319", max_length=20)
    source_ton: int = Field(default=0, ge=0, le=255)
    source_npi: int = Field(default=0, ge=0, le=255)
    # How destination numbers go on the wire: 8613812345678 (ton 1) or 13812345678 (ton 2).
    dest_format: Literal["international", "national"] = "international"
    enquire_link_interval: float = Field(default=30.0, gt=0)
    enquire_link_timeout: float = Field(default=10.0, gt=0)
    response_timeout: float = Field(default=30.0, gt=0)
    window: int = Field(default=10, ge=1, le=1000)
    # The account's cap at the carrier, over every bind: with several nodes bound, each paces
    # itself at this divided by the live nodes holding binds (callcenter/cluster/smpp.py).
    max_parts_per_second: float = Field(default=50.0, gt=0)
    # Binds the carrier allows on the account (a trx link is one, tx+rx two); a node binds only
    # while the live nodes' binds stay within it. 0: no cap.
    max_binds: int = Field(default=0, ge=0, le=1000)
    throttle_pause: float = Field(default=1.0, ge=0)
    tls: bool = False
    reconnect_min: float = Field(default=1.0, gt=0)
    reconnect_max: float = Field(default=60.0, gt=0)
    # data_coding values whose bytes are GBK (CMPP Msg_Fmt=15); add 0 for gateways that send GBK under 0.
    gbk_codings: list[int] = [15]
    # Seconds an MT may wait at the SMSC (and in our outbox) before it is given up.
    validity_period: int = Field(default=48 * 3600, ge=60, le=99 * 86400)
    registered_delivery: int = Field(default=1, ge=0, le=255)
    # How submit_sm_resp ids relate to receipt ids at this SMSC (see sms.dlr.IdBases). "auto"
    # learns it per link from unambiguous (submit id, receipt id) pairs, kept in sms_id_bases.
    id_bases: Literal["auto", "same", "submit_hex_receipt_dec", "submit_dec_receipt_hex"] = "auto"
    # Agreeing unambiguous pairs (and none against) before "auto" trusts one relation.
    id_bases_learn_pairs: int = Field(default=3, ge=1, le=1000)


class RetryRule(_Section):
    attempts: int = Field(ge=0, le=1000)
    delay: float = Field(gt=0)


class SmsSettings(_Section):
    """[sms]: the SMS intake pipeline, outbox sender and supervisor tasks."""

    # Seconds to wait for the missing parts of a long MO before it becomes a flagged draft.
    reassembly_timeout: float = Field(default=300.0, gt=0)
    # How long a copy of a text may still be the SMSC redelivering it (no second case); commands
    # use the shorter window. Within it, a copy on the connection that carried the first with
    # another sequence number, or with other TLVs, is the citizen sending again (docs/sms.md).
    redelivery_window: float = Field(default=24 * 3600.0, gt=0)
    command_redelivery_window: float = Field(default=900.0, gt=0)
    # Texts committed together in one transaction at most (intake groups; the SMPP window
    # bounds how many are waiting anyway).
    intake_group_max: int = Field(default=64, ge=1, le=1000)
    # Seconds the intake waits for more texts to join a group before its transaction (0: none).
    intake_linger: float = Field(default=0.002, ge=0, le=0.1)
    # Per number: more than rate_limit texts within rate_window are folded into one draft.
    rate_limit: int = Field(default=5, ge=1)
    rate_window: float = Field(default=600.0, gt=0)
    # The same text this many times within loop_window blocks the number for loop_block seconds.
    loop_threshold: int = Field(default=20, ge=2)
    loop_window: float = Field(default=300.0, gt=0)
    loop_block: float = Field(default=3600.0, gt=0)
    # The loop window is counted in the store (`rate_windows`, shared by every node) in buckets
    # this wide: an arrival up to one bucket older than the window may still be counted.
    window_bucket_seconds: float = Field(default=10.0, ge=1, le=3600)
    blocklist_file: str = "config/sms-blocklist.txt"
    roster_file: str = "config/roster.toml"
    task_escalation_minutes: float = Field(default=30.0, gt=0)
    # Overrides the roster's [shift_leader] phone when set.
    shift_leader_phone: str = ""
    outbox_poll_interval: float = Field(default=1.0, gt=0)
    outbox_batch: int = Field(default=50, ge=1, le=10_000)
    # A claim takes at most what this node may submit in this many seconds at its share of
    # the account's rate (when the gateway paces), so a node that dies leaves little claimed
    # and not yet sent: such messages wait for `in_doubt_wait` before another node sends them.
    outbox_claim_seconds: float = Field(default=2.0, gt=0, le=3600)
    # The sender's group writer (submit_sm_resps and receipts): after the first item of a group it
    # waits this long for more, unless `outbox_group_max` are already queued.
    outbox_group_linger: float = Field(default=0.002, ge=0, le=0.1)
    outbox_group_max: int = Field(default=200, ge=1, le=5000)
    # An unanswered submit waits this long for a receipt that proves it arrived before it is resent.
    in_doubt_wait: float = Field(default=600.0, gt=0)
    # A claimed batch is leased for this long and renewed every third of it while in flight;
    # another node takes back (as in doubt) only a lease that has expired.
    outbox_lease: float = Field(default=60.0, ge=1.0)
    housekeeping_interval: float = Field(default=5.0, gt=0)
    # Longer texts are cut for the draft (the whole text stays in sms_inbound).
    max_text_chars: int = Field(default=3800, ge=100, le=3950)
    retry: dict[str, RetryRule] = {k: RetryRule(**v) for k, v in DEFAULT_SUBMIT_RETRY.items()}  # type: ignore[arg-type]

    @field_validator("retry")
    @classmethod
    def _known_statuses(cls, value: dict[str, RetryRule]) -> dict[str, RetryRule]:
        for key in value:
            if key.upper() not in SMPP_STATUS_NAMES and not re.fullmatch(r"0[xX][0-9a-fA-F]{1,8}", key):
                raise ValueError(f"unknown SMPP status {key!r}: use a name such as ESME_RTHROTTLED or hex 0x58")
        return value

    def retry_rules(self) -> dict[int, RetryRule]:
        """The table keyed by command_status."""
        rules: dict[int, RetryRule] = {}
        for key, rule in self.retry.items():
            code = SMPP_STATUS_NAMES.get(key.upper())
            rules[code if code is not None else int(key, 16)] = rule
        return rules


class RecordingSettings(_Section):
    """[recordings]: one volume seen through two mounts (often the same path).

    `asterisk_dir` is where Asterisk writes (the path sent in RECORD FILE); `service_dir` is
    where this service reads the same files (validation, the console's player). Drafts keep
    the file name relative to the directory, so neither mount point is stored in a case.
    """

    # The defaults meet on one host: Asterisk's spool folder (= CALLCENTER_RECORDING_DIR in
    # extensions.conf), read by the service where Asterisk writes.
    asterisk_dir: str = "/var/spool/asterisk/recording/callcenter"
    service_dir: str = "/var/spool/asterisk/recording/callcenter"


class AmiSettings(_Section):
    """[ami]: Asterisk Manager Interface: queue events (answer times, screen-pops), call-backs
    and queue status. Off by default."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=5038, ge=1, le=65535)
    username: str = "callcenter"
    secret: str = ""
    # Seconds to wait for a TCP connection, and for the answer to one action.
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    action_timeout: float = Field(default=10.0, gt=0, le=300)
    # Back-off between reconnection attempts while Asterisk is down or restarting.
    reconnect_min: float = Field(default=1.0, gt=0)
    reconnect_max: float = Field(default=60.0, gt=0)
    # A Ping this often notices a connection that died without a FIN.
    ping_interval: float = Field(default=30.0, gt=0)
    # Call-back (回访) Originate: {number} is the national number (13812345678).
    callback_channel: str = "PJSIP/{number}@carrier"
    callback_context: str = "callcenter-callback"
    callback_caller_id: str = "075512319"
    # Seconds the citizen's phone rings before the call-back is given up (also when staff
    # call a reporter from the console: the carrier leg of callcenter-staff-dial).
    callback_ring_seconds: int = Field(default=45, ge=5, le=300)
    # Staff call a reporter back from the console (回拨市民): the staff member's own phone
    # (staff_accounts.queue_interface) rings first, this long; when they answer the dialplan
    # context dials the reporter through `callback_channel` with `callback_caller_id`.
    staff_dial_context: str = Field(default="callcenter-staff-dial", pattern=r"^[A-Za-z0-9_-]{1,79}$")
    staff_dial_ring_seconds: int = Field(default=30, ge=5, le=120)

    @field_validator("callback_channel")
    @classmethod
    def _has_number(cls, value: str) -> str:
        if "{number}" not in value:
            raise ValueError("must contain {number}, e.g. PJSIP/{number}@carrier")
        if re.search(r"[,|&\s${}]", value.replace("{number}", "")):
            # Dial() takes it apart at commas and &; ${...} would be evaluated by the dialplan.
            raise ValueError("one channel such as PJSIP/{number}@carrier (no commas, &, |, spaces or $)")
        return value


class CallbackSettings(_Section):
    """[callback]: rating call-backs (回访) a reporter asked for, placed through AMI when the
    case closes. Needs `[ami] enabled`. Hours are local (`cases.timezone`), every day."""

    enabled: bool = False
    # Calls are placed only between these local times ("HH:MM", start inclusive, end exclusive).
    hours_start: str = "09:00"
    hours_end: str = "20:00"
    # Calls placed in all before giving up (no answer, busy, congestion, refused).
    max_attempts: int = Field(default=3, ge=1, le=20)
    # Wait between attempts.
    retry_minutes: float = Field(default=30.0, gt=0, le=24 * 60)
    # How often due call-backs are looked for.
    poll_seconds: float = Field(default=30.0, gt=0, le=3600)
    # A call with no outcome from Asterisk after this long (an AMI restart lost its events)
    # counts as a failed attempt.
    stale_minutes: float = Field(default=15.0, gt=0, le=24 * 60)

    @field_validator("hours_start", "hours_end")
    @classmethod
    def _clock(cls, value: str) -> str:
        hours, sep, minutes = value.partition(":")
        if not (sep and hours.isdigit() and minutes.isdigit() and 0 <= int(hours) <= 24
                and 0 <= int(minutes) < 60 and len(minutes) == 2):
            raise ValueError("must be a local time HH:MM, e.g. 09:00")
        return value


class VoiceSettings(_Section):
    """[voice]: the IVR over FastAGI. Unset overrides keep the values of ivr_scripts/*.toml."""

    # Staff queue (queues.conf); reported by AMI queue status.
    queue: str = "hotline-agents"
    flows_dir: str = "ivr_scripts"
    hours_file: str = "config/hours.toml"
    # Overrides of every flow's values (None: as the flow file says).
    record_max_seconds: int | None = Field(default=None, ge=1, le=3600)
    record_silence_seconds: int | None = Field(default=None, ge=1, le=60)
    digit_timeout_seconds: float | None = Field(default=None, ge=0.5, le=120)
    # A 20 ms frame of a recording louder than this (RMS, dBFS) is speech; less speech than
    # a record state's min_seconds is a silent try (callcenter/voice/recordings.py).
    speech_threshold_dbfs: float = Field(default=-40.0, ge=-90, le=0)
    # Invalid or silent tries before a person; states that deliberately allow one try
    # (after the number has been read out) keep it.
    retries: int | None = Field(default=None, ge=1, le=20)
    # On shutdown (SIGTERM) the FastAGI port closes at once (Asterisk sends new calls to the
    # other nodes) and calls in progress go on normally for up to drain_seconds; then the
    # callers still in the IVR are handed to a person at their next step, and after
    # drain_handover_seconds more the rest are cut (the owed work is done as for a hang-up;
    # the dialplan sends the caller to the staff queue). Keep the process manager's stop
    # timeout above the sum (docker compose: stop_grace_period).
    drain_seconds: float = Field(default=90.0, ge=0, le=3600)
    drain_handover_seconds: float = Field(default=10.0, ge=0, le=600)


class Open311Settings(_Section):
    # A POST repeated within this many minutes (same key, same fields) returns the first
    # request instead of filing a second; 0 keeps only the Idempotency-Key header.
    retry_window_minutes: int = Field(default=10, ge=0, le=24 * 60)


class Settings(_Section):
    node: NodeSettings = NodeSettings()
    jobs: JobSettings = JobSettings()
    database: DatabaseSettings = DatabaseSettings()
    http: HttpSettings = HttpSettings()
    agi: AgiSettings = AgiSettings()
    cases: CaseSettings = CaseSettings()
    catalogue: CatalogueSettings = CatalogueSettings()
    grids: GridSettings = GridSettings()
    messages: MessageSettings = MessageSettings()
    logging: LoggingSettings = LoggingSettings()
    prompts: PromptSettings = PromptSettings()
    console: ConsoleSettings = ConsoleSettings()
    smpp: SmppSettings = SmppSettings()
    sms: SmsSettings = SmsSettings()
    recordings: RecordingSettings = RecordingSettings()
    ami: AmiSettings = AmiSettings()
    callback: CallbackSettings = CallbackSettings()
    voice: VoiceSettings = VoiceSettings()
    open311: Open311Settings = Open311Settings()

    def node_id(self) -> str:
        """`[node] id`, or host name + HTTP port (+ pid when the port is chosen by the OS)."""
        if self.node.id:
            return self.node.id
        host = socket.gethostname() or "localhost"
        if self.http.port == 0:
            return f"{host}:0/{os.getpid()}"[:64]
        return f"{host}:{self.http.port}"[:64]

    def path(self, value: str) -> Path:
        """Resolve a configured path against the project root unless it is absolute."""
        candidate = Path(value)
        return candidate if candidate.is_absolute() else PROJECT_ROOT / candidate


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        if "__" not in rest:
            continue
        section, key = rest.split("__", 1)
        overrides.setdefault(section.lower(), {})[key.lower()] = value
    return overrides


def _coerce_env(value: str, current: Any) -> Any:
    """Env values are strings; lists are given as TOML arrays or comma-separated text."""
    if isinstance(current, list):
        text = value.strip()
        if text.startswith("["):
            try:
                return tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                return value
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def load_settings(
    config_file: Path | str | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read the TOML file, apply environment overrides, validate.

    Raises SettingsError naming the bad key (`http.port`, or `CALLCENTER_HTTP__PORT`).
    """
    environ = dict(os.environ if environ is None else environ)
    path = Path(config_file) if config_file else DEFAULT_CONFIG_FILE
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    elif config_file:
        raise SettingsError(f"config file not found: {path}")

    defaults = Settings().model_dump()
    sources: dict[str, str] = {}
    for section, keys in _env_overrides(environ).items():
        if section not in defaults:
            raise SettingsError(
                f"unknown settings section {section!r} in "
                f"{ENV_PREFIX}{section.upper()}__{next(iter(keys)).upper()}"
            )
        target = data.setdefault(section, {})
        for key, value in keys.items():
            current = defaults[section].get(key)
            target[key] = _coerce_env(value, current)
            sources[f"{section}.{key}"] = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            origin = sources.get(key, str(path))
            problems.append(f"{key} (from {origin}): {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from exc
