"""The actuator seam: how the controller changes a backend's settings.

Two implementations sit behind it: ``LemonadeActuator`` (a server that reloads in place
through its ``/load`` API: Lemonade, or the embedded engine's Lemonade API) and
``ManagedBackend`` (a backend process Infer-OS runs itself, switched blue/green).
An actuator that fails raises ``ActuatorError`` after putting the backend back on its last
good settings where it can; the controller then trips the fail-safe.
"""

from __future__ import annotations

from typing import Any, Protocol

from inferos.controller.snapshot import BackendSettings
from inferos.errors import InferOSError


class ActuatorError(InferOSError):
    """A reconfiguration failed; ``rolled_back`` says whether the last good one is back."""

    def __init__(self, message: str, *, rolled_back: bool) -> None:
        super().__init__(message)
        self.rolled_back = rolled_back


class Actuator(Protocol):
    name: str

    @property
    def settings(self) -> BackendSettings:
        """The settings in effect (the last that applied successfully)."""
        ...

    async def apply(self, settings: BackendSettings, model: str | None) -> None: ...

    async def describe(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...
