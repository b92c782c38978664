"""The models the engine server knows: by name (preparable), or by folder (given by path).

Like Lemonade's model registry: ``GET models`` lists the ones ready to load (prepared,
Lemonade's "downloaded"); ``?show_all=true`` adds those that could be prepared. A request
naming a prepared model that is not loaded loads it on demand; naming anything else is 404.
Ids match case-insensitively, as users type ``SmolLM2-135M-Instruct`` for
``smollm2-135m-instruct``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Lemonade names how a model runs with a recipe; clients only display it, and GAIA adds
# llama.cpp arguments only when it reads "llamacpp", which this engine is not.
RECIPE = "inferos-ort"
OWNER = "lemonade"  # what Lemonade answers, and what clients that filter on it expect


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    source: str  # what the engine core's load_model receives: a name or a folder path
    folder: Path | None  # the prepared folder, None when not prepared
    created: int = 0

    @property
    def prepared(self) -> bool:
        return self.folder is not None

    def size_gb(self) -> float | None:
        if self.folder is None:
            return None
        total = sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file())
        return round(total / 1e9, 3)

    def max_context_window(self) -> int | None:
        """The model's own context length (its ``genai_config.json``); None when it is not
        prepared or does not say. GAIA reads it so as not to ask a load for more."""
        if self.folder is None:
            return None
        try:
            genai = json.loads((self.folder / "genai_config.json").read_text())
            return int(genai["model"]["context_length"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def as_model(self) -> dict[str, Any]:
        return {
            "id": self.id, "created": self.created, "object": "model", "owned_by": OWNER,
            "checkpoint": str(self.folder) if self.folder else self.source,
            "recipe": RECIPE, "size": self.size_gb(), "downloaded": self.prepared,
            "suggested": True, "labels": ["llm"],
            "max_context_window": self.max_context_window(),
        }


class ModelCatalog:
    """``names`` are preparable model names; ``prepared_folder(name)`` says where one is
    prepared (None: not yet); ``folders`` are model folders given by path."""

    def __init__(self, names: Iterable[str], prepared_folder: Callable[[str], Path | None],
                 folders: Iterable[Path] = ()) -> None:
        self._names = tuple(names)
        self._prepared_folder = prepared_folder
        self._folders = tuple(Path(f) for f in folders)

    def entries(self, show_all: bool = False) -> list[CatalogEntry]:
        found = []
        for folder in self._folders:
            if folder.is_dir():
                found.append(CatalogEntry(folder.name, str(folder), folder,
                                          int(folder.stat().st_mtime)))
        for name in self._names:
            prepared = self._prepared_folder(name)
            if prepared is not None or show_all:
                created = int(prepared.stat().st_mtime) if prepared is not None else 0
                found.append(CatalogEntry(name, name, prepared, created))
        return found

    def find(self, name: str) -> CatalogEntry | None:
        """The entry a request's model name means (prepared or not), or None."""
        wanted = name.strip().lower()
        for entry in self.entries(show_all=True):
            if wanted in (entry.id.lower(), entry.source.lower()):
                return entry
        return None
