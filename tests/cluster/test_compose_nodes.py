"""docker-compose.yml runs two service nodes behind one Asterisk and one PostgreSQL (issue 11).

Docker images cannot be pulled where the suite runs, so the file is parsed (PyYAML, merge keys
resolved as Compose resolves them) and what two nodes depend on is checked: distinct node ids
and host ports, one database and one SMPP account, health checks that gate Asterisk and the
second node's start, and every node's FastAGI listener reachable through the address the
dialplan uses; and that the images build from nothing but their base images (no `# syntax=`
frontend to fetch). scripts/compose-check runs the file for real (docs/deployment.md). The
single-file cross-references (volumes, AMI, prompts) are
tests/voice/test_deployment_files.py's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from callcenter.settings import Settings, load_settings
from tests.voice.test_deployment_files import env, globals_, service

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service_nodes(compose: dict[str, Any]) -> list[str]:
    """The callcenter service nodes: every service built from the service image's Dockerfile."""
    return [name for name, svc in compose["services"].items()
            if isinstance(svc.get("build"), dict) and svc["build"].get("dockerfile") == "docker/service/Dockerfile"]


def node_settings(compose: dict[str, Any]) -> dict[str, Settings]:
    return {name: load_settings(environ=env(service(compose, name))) for name in service_nodes(compose)}


def aliases(svc: dict[str, Any]) -> set[str]:
    networks = svc.get("networks") or {}
    if isinstance(networks, list):
        return set()
    return {alias for net in networks.values() if net for alias in net.get("aliases", [])}


def host_port(item: Any) -> tuple[int, int]:
    """(host port, container port) of a short-syntax TCP port mapping."""
    spec = str(item).partition("/")[0]
    host, sep, container = spec.rpartition(":")
    assert sep and host, f"not published on a fixed host port: {item!r}"
    return int(host.rsplit(":", 1)[-1]), int(container)  # host may be "ip:port"


def test_two_nodes_with_distinct_ids_and_host_ports(compose: dict[str, Any]) -> None:
    settings = node_settings(compose)
    assert len(settings) >= 2, f"service nodes: {sorted(settings)}"
    ids = [s.node.id for s in settings.values()]
    assert all(ids) and len(set(ids)) == len(ids), f"node ids must be set and differ: {ids}"
    published = {}
    for name, s in settings.items():
        ports = [host_port(p) for p in service(compose, name).get("ports", [])]
        assert [c for _, c in ports] == [s.http.port], f"{name} publishes {ports}, HTTP is {s.http.port}"
        published[name] = ports[0][0]
        assert s.http.host == "0.0.0.0" and s.agi.host == "0.0.0.0"
    assert len(set(published.values())) == len(published), f"host ports collide: {published}"


def test_nodes_share_one_database_and_one_smpp_account(compose: dict[str, Any]) -> None:
    settings = node_settings(compose)
    urls = {s.database.url for s in settings.values()}
    assert len(urls) == 1 and next(iter(urls)).startswith("postgresql://"), urls
    assert re.search(r"@postgres(:5432)?/", next(iter(urls))), "not the compose PostgreSQL"
    accounts = {(s.smpp.host, s.smpp.port, s.smpp.system_id) for s in settings.values()}
    assert len(accounts) == 1, accounts  # one bind each on the carrier's account
    # Identical nodes: the environment differs only in the node id.
    envs = [env(service(compose, name)) for name in settings]
    without_id = [{k: v for k, v in e.items() if k != "CALLCENTER_NODE__ID"} for e in envs]
    assert all(e == without_id[0] for e in without_id), "nodes differ in more than their id"
    builds = {repr(service(compose, name)["build"]) for name in settings}
    volumes = {tuple(service(compose, name)["volumes"]) for name in settings}
    assert len(builds) == 1 and len(volumes) == 1


def test_health_checks_gate_asterisk_and_the_second_node(compose: dict[str, Any]) -> None:
    settings = node_settings(compose)
    nodes = list(settings)
    for name, s in settings.items():
        check = service(compose, name)["healthcheck"]
        assert f"127.0.0.1:{s.http.port}/healthz" in " ".join(check["test"]), check
        assert check.get("start_period") and check.get("retries")
        assert service(compose, name)["depends_on"]["postgres"]["condition"] == "service_healthy"
    asterisk_deps = service(compose, "asterisk")["depends_on"]
    for name in nodes:
        assert asterisk_deps[name]["condition"] == "service_healthy", f"Asterisk does not wait for {name}"
    # The first node migrates the empty database and builds the prompts before the others start:
    # two `callcenter db upgrade` at once on an empty database would race.
    for name in nodes[1:]:
        assert service(compose, name)["depends_on"][nodes[0]]["condition"] == "service_healthy"
    assert "callcenter db upgrade" in (ROOT / "docker/service/entrypoint.sh").read_text(encoding="utf-8")


def test_every_nodes_fastagi_listener_is_known_to_asterisk(compose: dict[str, Any]) -> None:
    """The dialplan's node list (CALLCENTER_AGI_NODES, host:port&...) names every service node
    at its FastAGI port, and nothing else, so calls spread over all of them and fail over."""
    settings = node_settings(compose)
    listed = globals_()["CALLCENTER_AGI_NODES"].split("&")
    assert len(listed) == len(set(listed)), f"a node listed twice: {listed}"
    dialled: dict[str, int] = {}
    for entry in listed:
        host, _, port = entry.rpartition(":")
        assert host and port.isdigit(), f"not host:port: {entry!r}"
        dialled[host] = int(port)
    for name, s in settings.items():
        reachable_as = {name} | aliases(service(compose, name))
        hosts = reachable_as & set(dialled)
        assert hosts, f"{name} is not in the dialplan's CALLCENTER_AGI_NODES {listed}"
        assert all(dialled[h] == s.agi.port for h in hosts), f"{name} listens on {s.agi.port}: {listed}"
        assert str(s.agi.port) in [str(p) for p in service(compose, name)["expose"]]
    # Every host the dialplan dials is a service node (a stale one would fail every call's first try).
    for host in dialled:
        answering = [n for n in settings if n == host or host in aliases(service(compose, n))]
        assert answering, f"the dialplan dials {host}, which no service node answers to"


def seconds(duration: str) -> float:
    """A Compose duration (`1m30s`, `110s`, `2m`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), f"not a duration: {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def test_stop_grace_period_lets_a_node_drain_its_calls(compose: dict[str, Any]) -> None:
    """A stopped node drains its calls (SIGTERM); Docker kills it after stop_grace_period
    (10 s unless set), which would cut every call still in the IVR."""
    for name, s in node_settings(compose).items():
        grace = service(compose, name).get("stop_grace_period", "10s")
        needed = s.voice.drain_seconds + s.voice.drain_handover_seconds
        assert seconds(grace) > needed, f"{name}: stop_grace_period {grace}, the drain takes up to {needed:.0f} s"


def test_built_images_need_no_registry_but_their_base_image(compose: dict[str, Any]) -> None:
    """A `# syntax=` line makes BuildKit fetch that frontend image from a registry before the
    build starts, so `docker compose up --build` failed on an engine that has the base images
    but no registry (scripts/compose-check with scripts/compose-standins). The built-in
    frontend has every instruction these Dockerfiles use."""
    built = [svc["build"] for svc in compose["services"].values() if isinstance(svc.get("build"), dict)]
    assert built
    for build in built:
        dockerfile = (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()
        lines = dockerfile.read_text(encoding="utf-8").splitlines()
        directives = [line for line in lines if re.match(r"#\s*syntax\s*=", line, re.IGNORECASE)]
        assert not directives, f"{dockerfile.relative_to(ROOT)}: {directives}"
