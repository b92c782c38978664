"""The seam between the engine server and the engine core's model preparation.

The server knows models by name (prepared into the cache by ``inferos model prepare``) or
by the path of a prepared folder. This module answers the two questions the server asks
of the core (which names exist, where one is prepared) and builds the server's catalog.
"""

from __future__ import annotations

from pathlib import Path

from inferos.engine.model_catalog import ModelCatalog
from inferos.engine.runtime import EngineOptions, LoadedModel
from inferos.engine.runtime import load_model as _core_load_model

DEFAULT_MODEL = "smollm2-135m-instruct"
KNOWN_MODELS = (DEFAULT_MODEL,)


def prepared_folder(name: str) -> Path | None:
    """Where ``name`` is prepared with the default precision, or None when it is not."""
    from inferos.engine import prepare

    return prepare.prepared_folder(name)


def load_model(source: str, options: EngineOptions) -> LoadedModel:
    return _core_load_model(source, options)


def catalog_for(model: str) -> tuple[ModelCatalog, str]:
    """The catalog of a server started with ``--model model``, and that model's id there:
    a folder path is served under its folder name, beside the known names."""
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelCatalog(KNOWN_MODELS, prepared_folder, folders=[path.resolve()]), path.name
    return ModelCatalog(KNOWN_MODELS, prepared_folder), model
