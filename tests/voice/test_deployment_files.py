"""docker-compose.yml and config/asterisk/*.conf agree with each other and with the settings.

Docker is not needed: the files are parsed (PyYAML, and a small parser for Asterisk's
INI-like format) and every cross-reference that `docker compose up` depends on is checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from callcenter.ivr.prompt_ids import prompt_ids
from callcenter.settings import AgiSettings, PromptSettings, Settings, load_settings
from callcenter.voice.routes import REQUIRED_ROUTES

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
ASTERISK = ROOT / "config" / "asterisk"
PROMPTS = ROOT / "ivr_scripts" / "prompts" / "zh"


# --- Asterisk .conf parser -------------------------------------------------------------------

@dataclass
class Section:
    name: str
    template: bool = False
    inherits: list[str] = field(default_factory=list)
    entries: list[tuple[str, str]] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        values = self.all(key)
        return values[-1] if values else None

    def all(self, key: str) -> list[str]:
        return [value for k, value in self.entries if k == key]


_SECTION = re.compile(r"^\[([^\]]+)\](?:\(([^)]*)\))?$")


def _strip_comment(line: str) -> str:
    out = []
    i = 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            out.append(line[i + 1])
            i += 2
            continue
        if line[i] == ";":
            break
        out.append(line[i])
        i += 1
    return "".join(out).strip()


def parse_conf(path: Path) -> list[Section]:
    """Sections in file order; `key = value` and `key => value` lines; templates resolved."""
    sections: list[Section] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = _strip_comment(raw)
        if not line:
            continue
        match = _SECTION.match(line)
        if match:
            options = [o.strip() for o in (match.group(2) or "").split(",") if o.strip()]
            inherits = [o for o in options if o != "!"]
            sections.append(Section(match.group(1), "!" in options, inherits))
            continue
        assert sections, f"{path.name}:{number}: entry before any [section]"
        assert "=" in line, f"{path.name}:{number}: not a key = value line: {raw!r}"
        key, value = line.split("=", 1)
        sections[-1].entries.append((key.strip(), value.removeprefix(">").strip()))
    templates = {s.name: s for s in sections if s.template}
    for section in sections:
        for parent in reversed(section.inherits):
            assert parent in templates, f"{path.name}: [{section.name}] unknown template {parent}"
            section.entries[:0] = templates[parent].entries
    return [s for s in sections if not s.template]


def conf(name: str) -> list[Section]:
    return parse_conf(ASTERISK / name)


def section(sections: list[Section], name: str, type_: str | None = None) -> Section:
    found = [s for s in sections if s.name == name and (type_ is None or s.get("type") == type_)]
    assert len(found) == 1, f"expected one [{name}] (type {type_}), found {len(found)}"
    return found[0]


@dataclass(frozen=True)
class Step:
    context: str
    exten: str
    label: str
    app: str
    args: str


def dialplan() -> list[Step]:
    """Every priority of extensions.conf as (context, extension, label, application, args)."""
    steps: list[Step] = []
    for sec in conf("extensions.conf"):
        if sec.name in ("general", "globals"):
            continue
        exten = ""
        for key, value in sec.entries:
            assert key in ("exten", "same", "include"), f"[{sec.name}] unexpected {key}"
            if key == "include":
                continue
            if key == "exten":
                exten, value = value.split(",", 1)
            label, command = value.split(",", 1)
            match = re.fullmatch(r"(\w+)\((.*)\)", command.strip())
            assert match, f"[{sec.name}] {exten}: not App(args): {command}"
            steps.append(Step(sec.name, exten, label, match.group(1), match.group(2)))
    return steps


def globals_() -> dict[str, str]:
    return dict(section(conf("extensions.conf"), "globals").entries)


# --- docker-compose.yml ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services: dict[str, Any] = compose["services"]
    assert name in services, f"no service {name}: {sorted(services)}"
    return services[name]  # type: ignore[no-any-return]


def env(svc: dict[str, Any]) -> dict[str, str]:
    raw = svc.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Volume or host path -> target path in the container (short syntax)."""
    result = {}
    for item in svc.get("volumes", []):
        source, target, *_ = item.split(":")
        result[source] = target
    return result


def service_nodes(compose: dict[str, Any]) -> list[str]:
    """The callcenter service nodes: every service built from the service image's Dockerfile."""
    return [name for name, svc in compose["services"].items()
            if isinstance(svc.get("build"), dict) and svc["build"].get("dockerfile") == "docker/service/Dockerfile"]


def service_settings(compose: dict[str, Any], node: str | None = None) -> Settings:
    """What a service node's container starts with (the first node's unless named): defaults +
    the compose environment."""
    return load_settings(environ=env(service(compose, node or service_nodes(compose)[0])))


def published(svc: dict[str, Any]) -> set[tuple[int, str]]:
    """(host port, protocol) for every published port, ranges expanded."""
    ports: set[tuple[int, str]] = set()
    for item in svc.get("ports", []):
        spec, _, proto = str(item).partition("/")
        host = spec.split(":")[0]
        first, _, last = host.partition("-")
        for port in range(int(first), int(last or first) + 1):
            ports.add((port, proto or "tcp"))
    return ports


def under(path: str, directory: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))


# --- the checks ------------------------------------------------------------------------------

def test_compose_defines_the_four_services_with_buildable_contexts(compose: dict[str, Any]) -> None:
    nodes = service_nodes(compose)
    assert set(compose["services"]) == {"asterisk", "postgres", "smsc", *nodes} and len(nodes) >= 2
    assert service(compose, "postgres")["image"].startswith("postgres:16")
    assert service(compose, "asterisk")["image"].startswith("andrius/asterisk:22")
    for name in (*nodes, "smsc"):
        build = service(compose, name)["build"]
        context = ROOT / build["context"]
        dockerfile = (context / build["dockerfile"]).resolve()
        assert context.is_dir() and dockerfile.is_file(), f"{name}: {context}, {dockerfile}"
    service_dockerfile = (ROOT / "docker/service/Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim", service_dockerfile, re.M)
    assert re.search(r"apt-get install .*espeak-ng sox", service_dockerfile)
    assert "pip install -e ." in service_dockerfile
    for copied in re.findall(r"^COPY (\S+) ", service_dockerfile, re.M):
        assert (ROOT / copied).exists(), f"service image copies missing {copied}"
    entrypoint = (ROOT / "docker/service/entrypoint.sh").read_text(encoding="utf-8")
    assert "callcenter prompts build" in entrypoint and "callcenter db upgrade" in entrypoint


def test_smsc_image_runs_the_test_suites_simulator(compose: dict[str, Any]) -> None:
    smsc = service(compose, "smsc")
    context = ROOT / smsc["build"]["context"]
    for name in ("package.json", "package-lock.json", "simulator.js"):
        assert (context / name).is_file(), f"tests/smsc/{name} missing"
    # The simulator exits when its stdin closes; without stdin_open it would stop at once.
    assert smsc["stdin_open"] is True
    dockerfile = (context / smsc["build"]["dockerfile"]).read_text(encoding="utf-8")
    assert re.search(r'^CMD \["node", "simulator.js", "--port", "2775"', dockerfile, re.M)
    command = smsc["command"]
    assert command[:2] == ["node", "simulator.js"]
    options = dict(zip(command[2::2], command[3::2], strict=True))
    assert options["--host"] == "0.0.0.0"  # reachable from the service container
    smpp = service_settings(compose).smpp
    assert smpp.host == "smsc" and options["--port"] == str(smpp.port)
    assert str(smpp.port) in [str(p) for p in smsc["expose"]]
    assert (options["--system-id"], options["--password"]) == (smpp.system_id, smpp.password)


def test_service_environment_is_valid_settings(compose: dict[str, Any]) -> None:
    settings = service_settings(compose)  # raises SettingsError on an unknown key or bad value
    assert settings.http.host == "0.0.0.0" and settings.agi.host == "0.0.0.0"
    postgres = env(service(compose, "postgres"))
    url = re.fullmatch(r"postgresql://([^:]+):([^@]+)@([^:/]+)(?::(\d+))?/(\w+)",
                       settings.database.url)
    assert url, settings.database.url
    user, password, host, port, database = url.groups()
    assert (user, password, database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"],
                                          postgres["POSTGRES_DB"])
    assert host == "postgres" and port in (None, "5432")
    for node in service_nodes(compose):
        depends = service(compose, node)["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert str(service(compose, node)["ports"][0]).endswith(f":{settings.http.port}")


def test_agi_nodes_in_the_dialplan_are_the_service_nodes(compose: dict[str, Any]) -> None:
    settings = service_settings(compose)
    steps = dialplan()
    # one AGI() in the file: the node loop of [callcenter-agi], which every IVR entry reaches
    agi_steps = [(s.context, s.args) for s in steps if s.app == "AGI"]
    assert agi_steps == [("callcenter-agi", "agi://${node}/${ARG1}")]
    scripts = set()
    for step in steps:
        if step.app == "Gosub" and step.args.startswith("callcenter-agi,"):
            match = re.fullmatch(r"callcenter-agi,s,1\((\w+)\)", step.args)
            assert match, f"[{step.context}] {step.exten}: Gosub({step.args})"
            scripts.add(match.group(1))
    assert scripts == {"hotline", "status", "voicemail", "callback", "recover"}
    assert scripts == set(REQUIRED_ROUTES)  # every script the dialplan runs has a flow
    assert "4573" not in "".join(s.args for s in steps)
    # host:port of each node, written once in [globals]: service nodes of the compose file
    nodes = globals_()["CALLCENTER_AGI_NODES"].split("&")
    assert nodes and len(set(nodes)) == len(nodes)
    for node in nodes:
        host, port = node.rsplit(":", 1)
        assert int(port) == settings.agi.port == AgiSettings().port
        built_from = service(compose, host)["build"]["dockerfile"]
        assert built_from == "docker/service/Dockerfile", f"{host} of CALLCENTER_AGI_NODES is not a service node"
        assert str(settings.agi.port) in [str(p) for p in service(compose, host)["expose"]]
    assert globals_()["CALLCENTER_AGI_TURN"] == "0"


def _seconds(duration: str) -> float:
    """A compose duration (`110s`, `2m`, `1m30s`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}
    return sum(float(n) * scale[u] for n, u in parts)


def test_service_nodes_may_drain_their_calls_before_docker_kills_them(compose: dict[str, Any]) -> None:
    """On `docker compose stop` a node drains its calls (docs/multi-node.md, Voice); docker's
    default stop timeout (10 s) would kill it first."""
    nodes = [name for name, svc in compose["services"].items() if isinstance(svc.get("build"), dict)
             and svc["build"].get("dockerfile") == "docker/service/Dockerfile"]
    assert nodes
    for node in nodes:
        voice = load_settings(environ=env(service(compose, node))).voice
        grace = service(compose, node).get("stop_grace_period", "10s")
        assert _seconds(str(grace)) > voice.drain_seconds + voice.drain_handover_seconds, node


def test_hotline_did_reaches_the_ivr() -> None:
    steps = dialplan()
    carrier = section(conf("pjsip.conf"), "carrier", "endpoint")
    inbound = [s for s in steps if s.context == carrier.get("context") and s.exten == "12319"]
    assert inbound and inbound[0].app == "Goto" and inbound[0].args == "hotline,s,1"
    hotline = [s for s in steps if s.context == "hotline" and s.exten == "s"]
    assert [s.app for s in hotline][:3] == ["NoOp", "Set", "Gosub"]
    assert hotline[1].args == "CHANNEL(language)=zh"
    assert hotline[2].args == "callcenter-agi,s,1(hotline)"
    # every value the IVR may put in CALLCENTER_NEXT is an extension of [hotline], and so are
    # the two ways out when it says nothing: no node reached, or the node lost mid-call
    extens = {s.exten for s in steps if s.context == "hotline"}
    assert {"agent", "voicemail", "hangup", "status", "i", "service-down", "ivr-lost"} <= extens
    lost = [s for s in steps if s.context == "hotline" and s.exten == "ivr-lost"]
    assert [s.app for s in lost][-2:] == ["Playback", "Goto"] and lost[-1].args == "agent,1"
    # a take the lost IVR had named is filed on a live node before the apology and the queue
    recover = [i for i, s in enumerate(lost) if s.app == "Gosub" and s.args == "callcenter-agi,s,1(recover)"]
    assert len(recover) == 1 and recover[0] < [s.app for s in lost].index("Playback")
    down = [s for s in steps if s.context == "hotline" and s.exten == "voicemail-down"]
    assert [s.args for s in down if s.app == "Gosub"] == ["callcenter-agi,s,1(recover)"]


def test_dialplan_jumps_land_on_existing_contexts() -> None:
    steps = dialplan()
    contexts = {s.context for s in steps}
    for step in steps:
        if step.app == "Goto" and step.args.count(",") == 2:
            assert step.args.split(",")[0] in contexts, f"[{step.context}] Goto({step.args})"
        if step.app == "GotoIf":
            target = step.args.split("?", 1)[1]
            if target.count(",") == 2:
                assert target.split(",")[0] in contexts, f"[{step.context}] GotoIf({step.args})"
        for predial in re.findall(r"\bb\(([\w-]+)\^", step.args):
            assert predial in contexts
        if step.app == "Gosub":
            assert step.args.split(",")[0] in contexts, f"[{step.context}] Gosub({step.args})"
    pjsip = conf("pjsip.conf")
    for endpoint in (s for s in pjsip if s.get("type") == "endpoint"):
        assert endpoint.get("context") in contexts, f"endpoint {endpoint.name}"
    callback = [s for s in steps if s.context == "callcenter-callback"]
    assert any(s.app == "Gosub" and s.args == "callcenter-agi,s,1(callback)" for s in callback)
    # the contexts the service originates into exist (settings defaults)
    from callcenter.settings import AmiSettings

    defaults = AmiSettings()
    assert {defaults.callback_context, defaults.staff_dial_context} <= contexts


def test_queue_in_the_dialplan_exists_in_queues_conf() -> None:
    queues = {s.name: s for s in conf("queues.conf") if s.name != "general"}
    used = [s for s in dialplan() if s.app in ("Queue", "AddQueueMember", "RemoveQueueMember")]
    assert any(s.app == "Queue" for s in used)
    for step in used:
        assert step.args.split(",")[0] in queues, f"[{step.context}] {step.app}({step.args})"
    agents = queues["hotline-agents"]
    assert agents.get("strategy") and agents.get("setinterfacevar") == "yes"
    assert agents.get("setqueueentryvar") == "yes"
    endpoints = {s.name for s in conf("pjsip.conf") if s.get("type") == "endpoint"}
    for member in agents.all("member"):
        interface = member.split(",")[0]
        assert interface.startswith("PJSIP/") and interface[6:] in endpoints, member
    # the case number is handed to the agent's channel
    queue_ctx = [s for s in dialplan() if s.context == "callcenter-queue"]
    assert any(s.app == "Set" and s.args.startswith("__CALLCENTER_CASE_NUMBER=") for s in queue_ctx)


def test_recording_directory_is_the_shared_volume(compose: dict[str, Any]) -> None:
    recording_dir = globals_()["CALLCENTER_RECORDING_DIR"]
    assert recording_dir == "/var/spool/asterisk/recording/callcenter"
    assert mounts(service(compose, "asterisk"))["recordings"] == recording_dir
    for node in service_nodes(compose):
        assert mounts(service(compose, node))["recordings"] == recording_dir
    assert "recordings" in compose["volumes"]
    settings = service_settings(compose)
    console = getattr(settings, "console", None)
    if console is not None and hasattr(console, "recordings_dir"):
        assert console.recordings_dir == recording_dir
    for step in dialplan():
        if step.app == "MixMonitor":
            assert step.args.startswith("${CALLCENTER_RECORDING_DIR}/")


def test_prompts_are_built_where_asterisk_plays_them(compose: dict[str, Any]) -> None:
    settings = service_settings(compose)
    sounds = PromptSettings().asterisk_sounds_dir
    assert settings.prompts.asterisk_sounds_dir == sounds
    assert settings.prompts.output == sounds  # the service writes into the shared volume
    for node in service_nodes(compose):
        assert under(sounds, mounts(service(compose, node))["prompts"])
    assert under(sounds, mounts(service(compose, "asterisk"))["prompts"])
    # every prompt the Asterisk configuration plays exists
    ids = set(prompt_ids(PROMPTS))
    relative = str(PurePosixPath(sounds).relative_to("/var/lib/asterisk/sounds"))
    for name in ("extensions.conf", "queues.conf"):
        text = (ASTERISK / name).read_text(encoding="utf-8")
        referenced = re.findall(re.escape(relative) + r"/(\w+)", text)
        assert referenced or name == "extensions.conf"
        for prompt_id in referenced:
            assert prompt_id in ids, f"{name} plays {relative}/{prompt_id}, no such prompt"


def test_manager_user_matches_the_service_environment(compose: dict[str, Any]) -> None:
    manager = conf("manager.conf")
    general = section(manager, "general")
    users = [s for s in manager if s.name != "general"]
    assert len(users) == 1
    user = users[0]
    ami = service_settings(compose).ami
    assert ami.enabled
    assert user.name == ami.username
    assert user.get("secret") == ami.secret
    assert general.get("port") == str(ami.port)
    assert ami.host in compose["services"]
    assert ami.host == "asterisk"
    write = {p.strip() for p in (user.get("write") or "").split(",")}
    read = {p.strip() for p in (user.get("read") or "").split(",")}
    assert {"originate", "agent"} <= write and not {"system", "command", "all", "config"} & write
    assert {"call", "agent"} <= read
    assert "CALLCENTER_CASE_NUMBER" in (general.get("channelvars") or "").split(",")
    # AMI stays inside the compose network
    assert (int(general.get("port") or 0), "tcp") not in published(service(compose, "asterisk"))


def test_asterisk_mounts_exactly_our_config_files(compose: dict[str, Any]) -> None:
    asterisk_mounts = mounts(service(compose, "asterisk"))
    config_mounts = {src: dst for src, dst in asterisk_mounts.items()
                     if src.startswith("./config/")}
    ours = {f"./config/asterisk/{p.name}" for p in ASTERISK.glob("*.conf")}
    assert set(config_mounts) == ours
    for source, target in config_mounts.items():
        assert target == f"/etc/asterisk/{Path(source).name}"
    for raw in service(compose, "asterisk")["volumes"]:
        if raw.startswith("./config/"):
            assert raw.endswith(":ro")


def test_sip_and_rtp_ports_are_published(compose: dict[str, Any]) -> None:
    ports = published(service(compose, "asterisk"))
    transport = section(conf("pjsip.conf"), "transport-udp", "transport")
    assert transport.get("protocol") == "udp"
    assert (int((transport.get("bind") or "").rsplit(":", 1)[1]), "udp") in ports
    rtp = section(conf("rtp.conf"), "general")
    start, end = int(rtp.get("rtpstart") or 0), int(rtp.get("rtpend") or 0)
    wanted = {(p, "udp") for p in range(start, end + 1)}
    assert wanted and wanted <= ports
    assert {p for p in ports if p[1] == "udp"} - wanted == {(5060, "udp")}


def test_sample_credentials_are_marked_as_samples(compose: dict[str, Any]) -> None:
    secrets = [s.get("password") for s in conf("pjsip.conf") if s.get("type") == "auth"]
    secrets += [s.get("secret") for s in conf("manager.conf") if s.name != "general"]
    secrets.append(env(service(compose, "postgres"))["POSTGRES_PASSWORD"])
    secrets.append(service_settings(compose).smpp.password)
    assert len(secrets) >= 6
    for secret in secrets:
        assert secret and secret.startswith("SAMPLE"), secret
    for name in ("pjsip.conf", "manager.conf"):
        assert "SAMPLE" in (ASTERISK / name).read_text(encoding="utf-8").split("\n[", 1)[0]


def test_conf_parser_reads_what_asterisk_reads(tmp_path: Path) -> None:
    sample = tmp_path / "x.conf"
    sample.write_text("; comment\n[t](!)\ntype = aor\n[a](t)\nmax = 1 ; trailing\n"
                      "[b]\nexten => s,1,NoOp(a\\;b)\n same => n,Hangup()\n", encoding="utf-8")
    parsed = parse_conf(sample)
    assert [s.name for s in parsed] == ["a", "b"]
    assert parsed[0].entries == [("type", "aor"), ("max", "1")]
    assert parsed[1].entries == [("exten", "s,1,NoOp(a;b)"), ("same", "n,Hangup()")]
    sample.write_text("[a]\nnot an entry\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="not a key = value"):
        parse_conf(sample)


def test_service_down_path_uses_the_weekly_staff_hours_and_existing_prompts() -> None:
    """The dialplan's CALLCENTER_STAFF_HOURS (GotoIfTime) is hours.toml's weekly schedule."""
    import tomllib

    weekly = tomllib.loads((ROOT / "config" / "hours.toml").read_text(encoding="utf-8"))["weekly"]
    open_days = [day for day, ranges in weekly.items() if ranges]
    (ranges,) = {tuple(weekly[day]) for day in open_days}  # one schedule for every open day
    (span,) = ranges
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    indexes = [days.index(day) for day in open_days]
    assert indexes == list(range(indexes[0], indexes[-1] + 1)), "open days are not one run"
    timezone = tomllib.loads((ROOT / "config" / "hours.toml").read_text(encoding="utf-8"))["timezone"]
    expected = f"{span},{open_days[0]}-{open_days[-1]},*,*,{timezone}"
    assert globals_()["CALLCENTER_STAFF_HOURS"] == expected
    played = {m for s in dialplan() if s.app == "Playback"
              for m in re.findall(r"callcenter/zh/(\w+)", s.args)}
    assert {"service_unavailable", "system_busy"} <= played <= set(prompt_ids(PROMPTS))
