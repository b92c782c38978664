"""KV-cache library: chunks, quantizers, importance, level decisions, prefix index.

Numpy and the standard library only; the engine imports this, never the reverse.

    quantize.py      INT8/INT4 asymmetric group quantizers (KIVI: keys per channel,
                     values per token), error bounds
    levels.py        L0..L3, thresholds, ``decide_level``
    importance.py    I = alpha*attn + beta*freq + gamma*sem - eta*age, from observables
    chunk.py         ``KvChunk``: one layer/head/token range of K and V, level moves
    spill.py         L3 spill files (compressed, read back bit for bit)
    prefix_index.py  chained block hashes of token ids
    store.py         ``KvStore``: prefix reuse, per-chunk moves, accounting
    leveling.py      ``KvStore``'s policy and byte budget: demotion rounds, quality budget
    accounting.py    bytes per level; FP16/INT8/INT4/mixed figures for a model
    rotary.py        moving kept keys to compacted positions after eviction
"""

from inferos.kvstore.accounting import SMOLLM2_135M, LevelStats, ModelKvShape, memory_report
from inferos.kvstore.chunk import ChunkDroppedError, ChunkId, KvChunk
from inferos.kvstore.importance import ImportanceWeights
from inferos.kvstore.levels import Level, LevelThresholds, QualitySignal, decide_level
from inferos.kvstore.prefix_index import PrefixIndex, block_keys
from inferos.kvstore.quantize import (
    QuantizedTensor,
    dequantize,
    quantize_int4,
    quantize_int8,
)
from inferos.kvstore.rotary import compacted_shift, rotate_keys
from inferos.kvstore.store import KvStore, KvStoreConfig, PolicyRound, QualityCost

__all__ = [
    "SMOLLM2_135M",
    "ChunkDroppedError",
    "ChunkId",
    "ImportanceWeights",
    "KvChunk",
    "KvStore",
    "KvStoreConfig",
    "Level",
    "LevelStats",
    "LevelThresholds",
    "ModelKvShape",
    "PolicyRound",
    "PrefixIndex",
    "QualityCost",
    "QualitySignal",
    "QuantizedTensor",
    "block_keys",
    "compacted_shift",
    "decide_level",
    "dequantize",
    "memory_report",
    "quantize_int4",
    "quantize_int8",
    "rotate_keys",
]
