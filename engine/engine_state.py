"""What the engine server's handlers share: the catalog, the model slot, stats, defaults."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from inferos.engine.model_catalog import ModelCatalog
from inferos.engine.model_slot import ModelSlot
from inferos.engine.request_stats import RequestStats
from inferos.engine.runtime import EngineOptions


@dataclass
class EngineState:
    """``defaults`` are the options of a load that names none (the server's flags);
    ``default_model`` is loaded at start and used by requests that name no model."""

    catalog: ModelCatalog
    slot: ModelSlot
    defaults: EngineOptions
    default_model: str
    api_key: str | None = None
    control_token: str | None = None  # required by /inferos/v1/policy when set
    base_url: str = ""  # set once the listener is bound; health reports it as backend_url
    stats: RequestStats = field(default_factory=RequestStats)
    # Set by POST halt: the process that runs the server stops it (inferos engine).
    halted: asyncio.Event = field(default_factory=asyncio.Event)

    def names_loaded(self, name: str) -> bool:
        """True when ``name`` (any spelling the catalog accepts) is the loaded model."""
        state = self.slot.state
        if state is None:
            return False
        if name.strip().lower() in (state.name.lower(), state.source.lower()):
            return True
        entry = self.catalog.find(name)
        return entry is not None and entry.id == state.name


ENGINE = web.AppKey("engine", EngineState)
