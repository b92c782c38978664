"""The data plane's seam: one snapshot per request, gates that hold only the generations of
the model being reloaded, bounded waits ending in 503, passthrough switches."""

from __future__ import annotations

import asyncio
import threading

import pytest

from inferos.proxy.data_plane import DataPlane, GateTimeout


def _task(coro):  # type: ignore[no-untyped-def]
    return asyncio.get_running_loop().create_task(coro)


async def _bound() -> DataPlane:
    plane = DataPlane("http://a")
    plane.bind(asyncio.get_running_loop())
    return plane


async def test_a_snapshot_is_replaced_whole_never_changed() -> None:
    plane = await _bound()
    first = plane.snapshot
    plane.switch_upstream("http://b")
    plane.set_passthrough(True)
    assert first.upstream == "http://a" and not first.passthrough
    assert plane.snapshot.upstream == "http://b" and plane.snapshot.passthrough
    assert plane.snapshot.version > first.version


async def test_a_gate_holds_only_generations_of_its_model() -> None:
    plane = await _bound()
    gate = plane.close_gate("smollm2", "reloading smollm2", max_wait_s=5)
    # other routes and other models are not held at all
    await asyncio.wait_for(plane.admit("health", None, generation=False), 0.5)
    await asyncio.wait_for(plane.admit("halt", None, generation=False), 0.5)
    await asyncio.wait_for(plane.admit("chat/completions", "other-model", generation=True), 0.5)
    held = _task(plane.admit("chat/completions", "smollm2", generation=True))
    unnamed = _task(plane.admit("completions", None, generation=True))
    await asyncio.sleep(0.05)
    assert not held.done() and not unnamed.done()
    plane.open_gate(gate)
    await asyncio.wait_for(asyncio.gather(held, unnamed), 1.0)


async def test_a_gate_past_its_bound_refuses_instead_of_hanging() -> None:
    plane = await _bound()
    plane.close_gate("m", "reloading m", max_wait_s=0.05)
    with pytest.raises(GateTimeout):
        await plane.admit("chat/completions", "m", generation=True)
    assert plane.wait_timeouts == 1


async def test_gates_are_opened_from_another_thread() -> None:
    plane = await _bound()
    gate = plane.close_gate("m", "reloading m", max_wait_s=5)
    waiting = _task(plane.admit("chat/completions", "m", generation=True))
    await asyncio.sleep(0.02)
    opener = threading.Thread(target=plane.open_gate, args=(gate,))
    opener.start()
    await asyncio.wait_for(waiting, 2.0)
    opener.join()


async def test_the_limit_counts_generations_and_frees_slots() -> None:
    plane = await _bound()
    plane.set_limit(1)
    await plane.admit("chat/completions", None, generation=True)
    with plane.running("http://a", generation=True, admitted=True):
        second = _task(plane.admit("chat/completions", None, generation=True))
        await asyncio.sleep(0.05)
        assert not second.done()
        assert plane.in_flight("http://a", generation=True) == 1
    await asyncio.wait_for(second, 1.0)
    assert plane.in_flight() == 0


async def test_failsafe_and_user_switch_are_separate() -> None:
    plane = await _bound()
    assert plane.trip("controller stale") is True
    assert plane.trip("again") is False
    plane.set_passthrough(True)
    plane.clear_failsafe()
    assert plane.snapshot.passthrough and plane.snapshot.describe() == "passthrough"
    plane.set_passthrough(False)
    assert not plane.snapshot.passthrough


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DataPlane("http://a").set_limit(0)
