"""Prefix index: chained hashes of fixed-size token blocks, as vLLM's prefix caching.

Block ``i`` of a token sequence is tokens ``[i*B, (i+1)*B)``; its key is
``blake2b(key(i-1) || block tokens as int64 little-endian)``, with a fixed root for
``i = 0``. A key therefore names the whole prefix up to the end of its block, not only the
block's own tokens: the same 32 tokens after different histories have different KV
(attention mixed in everything before), so they must have different keys. Only full
blocks get keys; a partial tail is recomputed by the engine (fewer than B tokens).

``PrefixIndex`` maps keys to entries and answers "how many leading blocks of this prompt
are stored", counting a hit per stored block and a miss per full block that is not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import numpy as np

__all__ = ["DEFAULT_BLOCK_TOKENS", "PrefixIndex", "PrefixMatch", "block_keys"]

DEFAULT_BLOCK_TOKENS: Final = 32
"""Equal to the default quantization group: a key group of 32 tokens fills one block."""

_ROOT: Final = b"inferos-kv-prefix-v1"
_DIGEST_BYTES: Final = 16

T = TypeVar("T")


def block_keys(token_ids: Sequence[int] | np.ndarray, block_tokens: int = DEFAULT_BLOCK_TOKENS
               ) -> list[bytes]:
    """Chained keys of every full block of ``token_ids``."""
    if block_tokens < 1:
        raise ValueError("block_tokens must be positive")
    ids = np.asarray(token_ids, dtype="<i8")
    keys: list[bytes] = []
    parent = _ROOT
    for i in range(len(ids) // block_tokens):
        block = ids[i * block_tokens:(i + 1) * block_tokens]
        parent = hashlib.blake2b(parent + block.tobytes(), digest_size=_DIGEST_BYTES).digest()
        keys.append(parent)
    return keys


@dataclass(frozen=True)
class PrefixMatch(Generic[T]):
    """The stored leading blocks of a prompt: their keys and entries, in order."""

    keys: tuple[bytes, ...]
    entries: tuple[T, ...]
    block_tokens: int

    @property
    def n_tokens(self) -> int:
        return len(self.keys) * self.block_tokens


class PrefixIndex(Generic[T]):
    """Block key -> entry, with hit and miss counts of ``match``."""

    def __init__(self, block_tokens: int = DEFAULT_BLOCK_TOKENS) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be positive")
        self.block_tokens = block_tokens
        self._entries: dict[bytes, T] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._entries)

    def get(self, key: bytes) -> T | None:
        return self._entries.get(key)

    def put(self, key: bytes, entry: T) -> None:
        self._entries[key] = entry

    def remove(self, key: bytes) -> T | None:
        return self._entries.pop(key, None)

    def keys_for(self, token_ids: Sequence[int] | np.ndarray) -> list[bytes]:
        return block_keys(token_ids, self.block_tokens)

    def match(self, token_ids: Sequence[int] | np.ndarray, *, count: bool = True
              ) -> PrefixMatch[T]:
        """The longest run of leading blocks of ``token_ids`` that are stored.

        Stops at the first block that is not stored: the KV of every later block was
        computed on top of it, so it is of no use until that block is recomputed.
        """
        keys = self.keys_for(token_ids)
        found: list[bytes] = []
        entries: list[T] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                break
            found.append(key)
            entries.append(entry)
        if count:
            self.hits += len(found)
            self.misses += len(keys) - len(found)
        return PrefixMatch(tuple(found), tuple(entries), self.block_tokens)
