"""The staff dialer (回拨市民) of a test's services, talking to the scripted AMI peer."""

from __future__ import annotations

from typing import Any

from callcenter.app import Services
from callcenter.settings import AmiSettings
from callcenter.voice.ami import AmiClient
from callcenter.voice.staff_dial import StaffDialer
from tests.voice_calls.ami_peer import ScriptedAmi


async def start_staff_dialer(services: Services, **settings: Any) -> tuple[ScriptedAmi, AmiClient, StaffDialer]:
    """Start the scripted AMI peer and our AMI client logged in to it, and put a dialer that
    hears the client's events on `services`. `settings` are further [ami] values."""
    peer = ScriptedAmi()
    await peer.start()
    ami = AmiSettings(enabled=True, host="127.0.0.1", port=peer.port, username=peer.username,
                      secret=peer.secret, **settings)
    client = AmiClient(ami, queue="hotline-agents")
    await client.start()
    assert await client.wait_connected(10)
    dialer = StaffDialer(services.sessions, client, ami, events=services.events)
    client.on_event(dialer.on_event)
    services.staff_dialer = dialer
    return peer, client, dialer
