"""Screen-pop handles: what a handle reveals (nothing), how long it lives, and that an altered
or forged one never opens; the key every node shares, made once in the store."""

from __future__ import annotations

import asyncio
import base64
import re

import pytest
from sqlalchemy import func, select

from callcenter.app import Services
from callcenter.console.pop_handles import (
    KEY_BYTES,
    KEY_NAME,
    PopExpired,
    PopInvalid,
    PopSealer,
    new_key,
)
from callcenter.db.engine import create_engine
from callcenter.db.tables import SharedKeyRow
from callcenter.service.shared_keys import shared_key

PHONES = ["+8613812345678", "+861012345678", "+85221234567", "+447911123456", "+12025550123"]


class Clock:
    def __init__(self, now: float = 1_764_700_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_handle_opens_to_its_number_with_the_same_key_only() -> None:
    key = new_key()
    assert len(key) == KEY_BYTES
    maker, other_node = PopSealer(key, 3600), PopSealer(bytes(key), 3600)
    for phone in PHONES:
        assert other_node.open(maker.seal(phone)) == phone
    with pytest.raises(PopInvalid):
        PopSealer(new_key(), 3600).open(maker.seal(PHONES[0]))


def test_a_handle_reveals_nothing_of_the_number() -> None:
    sealer = PopSealer(new_key(), 3600)
    handles = [sealer.seal(phone) for phone in PHONES for _ in range(20)]
    # Same length for a mobile, a landline and foreign numbers: the length says nothing either.
    assert {len(h) for h in handles} == {64}
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{64}", h) for h in handles)
    assert len(set(handles)) == len(handles), "the same number twice gives two unrelated handles"
    for phone in PHONES:
        digits = phone[1:]
        for handle in handles:
            raw = base64.urlsafe_b64decode(handle)
            for tail in (digits[-4:], digits[-7:], digits):
                assert tail not in handle
                assert tail.encode() not in raw


def test_a_handle_expires_after_its_lifetime() -> None:
    clock = Clock()
    sealer = PopSealer(new_key(), 600, clock=clock)
    handle = sealer.seal("+8613812345678")
    clock.now += 599
    assert sealer.open(handle) == "+8613812345678"
    clock.now += 2
    with pytest.raises(PopExpired):
        sealer.open(handle)


def test_an_altered_truncated_or_forged_handle_does_not_open() -> None:
    sealer = PopSealer(new_key(), 3600)
    handle = sealer.seal("+8613812345678")
    raw = bytearray(base64.urlsafe_b64decode(handle))
    for i in range(len(raw)):  # every single bit of nonce, ciphertext (expiry, number) and tag
        for bit in range(8):
            altered = bytearray(raw)
            altered[i] ^= 1 << bit
            with pytest.raises(PopInvalid):
                sealer.open(base64.urlsafe_b64encode(bytes(altered)).decode())
    for bad in ["", "nope", handle[:63], handle + "A", handle[:-1] + "=", "A" * 64, "来电" * 32,
                handle[:32] + "\n" + handle[33:], handle.replace(handle[5], "+" if handle[5] != "+" else "/"),
                "%00" * 21 + "A"]:
        with pytest.raises(PopInvalid):
            sealer.open(bad)


def test_only_a_normalised_number_is_sealed() -> None:
    sealer = PopSealer(new_key(), 3600)
    for bad in ["", "+86138123456789012", "+86138\x0012345", "电话"]:
        with pytest.raises((ValueError, UnicodeEncodeError)):
            sealer.seal(bad)
    with pytest.raises(ValueError):
        PopSealer(b"short", 3600)


async def test_the_key_is_made_once_and_every_engine_reads_the_same(services: Services) -> None:
    """Several nodes (engines of their own) asking at once for a key nobody made yet."""
    engines = [create_engine(services.settings.database) for _ in range(4)]
    try:
        keys = await asyncio.gather(*(shared_key(e, KEY_NAME, new_key) for e in engines))
        assert len(set(keys)) == 1 and len(keys[0]) == KEY_BYTES
        assert await shared_key(services.engine, KEY_NAME, new_key) == keys[0]
        async with services.engine.connect() as conn:
            rows = (await conn.execute(select(func.count()).select_from(SharedKeyRow))).scalar_one()
        assert rows == 1
    finally:
        for engine in engines:
            await engine.dispose()
