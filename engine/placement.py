"""Where prefill and decode run: the scheduler's mode and devices, on the providers that exist.

``place(policy, available, running)`` maps ``scheduler.mode`` (hybrid | gpu_only |
npu_only | cpu_only), ``prefill_device`` and ``decode_device`` to onnxruntime providers
(engine_policy.DEVICE_PROVIDERS). A device this machine lacks falls back to the provider
the model's session runs on, and the placement says so and why. The engine runs one
session, on ``running``: a wanted provider that exists but is not that one is reported
as fallen back too (a second session on it is not built), never pretended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferos.engine.engine_policy import DEVICE_PROVIDERS, EnginePolicy, device_of

__all__ = ["Placement", "place"]

_MODE_DEVICES = {"gpu_only": ("cuda", "dml"), "npu_only": ("npu",), "cpu_only": ("cpu",)}


@dataclass(frozen=True)
class Placement:
    prefill_provider: str
    decode_provider: str
    prefill_reason: str | None = None  # why prefill is not where it was asked to be
    decode_reason: str | None = None

    @property
    def fell_back(self) -> bool:
        return self.prefill_reason is not None or self.decode_reason is not None

    @property
    def reason(self) -> str | None:
        return "; ".join(r for r in (self.prefill_reason, self.decode_reason) if r) or None

    @property
    def mode(self) -> str:
        """The mode that describes what runs."""
        devices = {device_of(self.prefill_provider), device_of(self.decode_provider)}
        if len(devices) > 1:
            return "hybrid"
        device = devices.pop()
        return {"cpu": "cpu_only", "npu": "npu_only"}.get(device, "gpu_only")

    def as_dict(self) -> dict[str, Any]:
        return {"prefill_provider": self.prefill_provider,
                "decode_provider": self.decode_provider,
                "prefill_device": device_of(self.prefill_provider),
                "decode_device": device_of(self.decode_provider),
                "mode": self.mode, "fell_back": self.fell_back, "reason": self.reason}


def _wanted(policy: EnginePolicy) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if policy.scheduler_mode == "hybrid":
        return (policy.prefill_device,), (policy.decode_device,)
    devices = _MODE_DEVICES[policy.scheduler_mode]
    return devices, devices


def _resolve(role: str, devices: tuple[str, ...], available: tuple[str, ...],
             running: str) -> str | None:
    """None when ``role`` runs where ``devices`` ask (on ``running``); else why not."""
    here = device_of(running)
    for device in devices:
        if running in DEVICE_PROVIDERS.get(device, ()):
            return None
    for device in devices:
        for provider in DEVICE_PROVIDERS.get(device, ()):
            if provider in available:
                return (f"{device} is available, but the engine runs one session, on one "
                        f"provider ({running}); {role} runs on {here}")
    return f"{' or '.join(devices)} is not available on this machine; {role} runs on {here}"


def place(policy: EnginePolicy, available: tuple[str, ...], running: str) -> Placement:
    prefill_devices, decode_devices = _wanted(policy)
    return Placement(running, running,
                     _resolve("prefill", prefill_devices, available, running),
                     _resolve("decode", decode_devices, available, running))
