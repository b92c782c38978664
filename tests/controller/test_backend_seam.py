"""The seams are interfaces, not shared fields: every backend kind implements the whole
Backend protocol (no capability found by getattr), and nothing outside the proxy can
assign the proxy's state."""

from __future__ import annotations

import inspect

import pytest

from inferos.controller.backend import Backend
from inferos.controller.backend_child import engine_launcher, llamacpp_launcher
from inferos.controller.lemonade_backend import (
    PYTHON_REASON,
    LemonadeBackend,
    capabilities_of,
    flavor_of,
)
from inferos.controller.managed_backend import ENGINE, LLAMACPP, ManagedBackend
from inferos.controller.snapshot import BackendSettings
from inferos.proxy.app import ProxyRuntime
from inferos.proxy.observer import Observer
from inferos.proxy.settings import ProxySettings


@pytest.mark.parametrize("backend", [
    LemonadeBackend("http://127.0.0.1:9"),
    ManagedBackend(ENGINE, engine_launcher("m"), BackendSettings()),
    ManagedBackend(LLAMACPP, llamacpp_launcher("m.gguf", "m"), BackendSettings()),
])
def test_every_backend_implements_the_whole_protocol(backend: object) -> None:
    assert isinstance(backend, Backend)
    for name, member in inspect.getmembers(Backend, inspect.isfunction):
        if not name.startswith("_"):
            assert inspect.signature(getattr(type(backend), name)).parameters.keys() == \
                inspect.signature(member).parameters.keys(), name


def test_the_proxys_state_is_changed_only_through_its_data_plane() -> None:
    runtime = ProxyRuntime(settings=ProxySettings(upstream="http://a"), observer=Observer())
    with pytest.raises(AttributeError):
        runtime.upstream = "http://b"  # type: ignore[misc]
    runtime.data_plane.switch_upstream("http://b")
    assert runtime.upstream == "http://b"


def test_capabilities_come_from_the_servers_own_health() -> None:
    python = capabilities_of(flavor_of({"status": "ok", "model_loaded": "m",
                                        "checkpoint_loaded": "/m"}))
    assert python.kind == "lemonade-python"
    assert all(not c.applicable for c in python.keys.values())
    assert python.of("backend.ctx_size").reason == PYTHON_REASON
    cpp = capabilities_of(flavor_of({"version": "9.1.4", "model_loaded": "m",
                                     "all_models_loaded": [{"model_name": "m",
                                                            "recipe": "llamacpp",
                                                            "recipe_options": {}}]}))
    assert cpp.kind == "lemonade-cpp" and cpp.of("backend.ctx_size").applicable
    assert not cpp.of("kv.recent_window").applicable
    engine = capabilities_of(flavor_of({"version": "11.5.0", "model_loaded": "m",
                                        "all_models_loaded": [{"model_name": "m",
                                                               "recipe": "inferos-ort",
                                                               "recipe_options": {}}]}))
    assert engine.kind == "engine" and engine.of("kv.recent_window").applicable
    assert not engine.of("kv.cache_type").applicable


def test_the_live_payload_is_a_body_the_engine_parses() -> None:
    """What POST /v1/policy set is what the engine's own parser reads from the body."""
    from inferos.controller.backend import live_payload
    from inferos.controller.policy import Policy, apply_patch
    from inferos.controller.policy_report import live_keys
    from inferos.engine.engine_policy import dotted, parse_policy

    policy = apply_patch(Policy(), {"scheduler": {"max_batch": 3, "max_queue": 0,
                                                  "tpot_budget_ms": 250},
                                    "speculation": {"enabled": False, "max_draft": 16}})
    body = live_payload(live_keys(policy), 42)
    assert body["scheduler"]["max_batch"] == 3
    assert body["speculation"] == {"enabled": False, "max_draft": 16}
    engine = parse_policy(body)
    assert (engine.version, engine.max_batch, engine.max_queue, engine.tpot_budget_ms,
            engine.speculation, engine.max_draft) == (42, 3, 0, 250.0, False, 16)
    # every live key the controller sends is a key the engine acknowledges, and no other
    assert set(dotted(engine)) == set(live_keys(policy))


def test_the_scheduling_keys_are_the_engines_alone_with_the_reason() -> None:
    from inferos.controller import backend as b
    from inferos.controller.lemonade_backend import NO_SCHEDULER
    from inferos.controller.managed_backend import managed_capabilities

    python = capabilities_of(flavor_of({"status": "ok", "model_loaded": "m"}))
    cpp = capabilities_of(flavor_of({"version": "9.1.4", "model_loaded": "m",
                                     "all_models_loaded": [{"model_name": "m",
                                                            "recipe": "llamacpp"}]}))
    engine = capabilities_of(flavor_of({"version": "11.5.0", "model_loaded": "m",
                                        "all_models_loaded": [{"model_name": "m",
                                                               "recipe": "inferos-ort"}]}))
    llamacpp = managed_capabilities(LLAMACPP)
    for key in b.SCHEDULING_KEYS:
        assert python.of(key).reason == cpp.of(key).reason == NO_SCHEDULER
        assert not python.of(key).applicable and not cpp.of(key).applicable
        assert engine.of(key).how == managed_capabilities(ENGINE).of(key).how == b.LIVE
        assert not llamacpp.of(key).applicable and "llama.cpp" in llamacpp.of(key).reason
    max_batch = llamacpp.of("scheduler.max_batch").reason
    assert "-np" in max_batch and "restart" in max_batch
    assert "--draft-max" in llamacpp.of("speculation.max_draft").reason
