"""KV quality harness: perplexity and KL divergence of quantized and evicted KV against
full-precision KV, on real English text, one run on the real model.

Method. The text (by default the GPL-3 and Apache-2.0 licences from
/usr/share/common-licenses, present on every Debian machine) is tokenized and cut to
``--tokens`` (2,048). The model runs over it in segments of ``--segment`` tokens. Before
each segment, every setting takes the full-precision past KV of the reference run and
transforms it — quantize -> dequantize at its level, or evict tokens — leaving the first
``--sinks`` tokens and the last ``--recent`` tokens exact; then it runs the segment on
that past. The reference runs the same segment on the untouched past. Per scored token:
the negative log-likelihood of the next token (-> perplexity) and
KL(p_fp || p_setting) of the next-token distributions. The first segment has no past to
transform and is not scored.

Settings:
  int8, int4        every past token except sinks and recent window, KIVI grouping
  mixed             the past put into a ``KvStore`` and moved by ``apply_policy``
                    (importance -> ``decide_level`` per layer and 32-token block)
  evict N%          N% of the past's unprotected 32-token blocks removed, lowest
                    importance first (mean over layers), the rest exact. The ONNX graph
                    reads only the attention mask's sum, so evicted tokens must be cut
                    out of the past and the next token sits at the compacted length.
                    "keys re-rotated" moves every kept key to its compacted position
                    (kvstore/rotary.py); "old positions" leaves their phases as they were,
                    to show why that is needed.

The measurement core (the model on a numpy past, the segment loop, the INT8/INT4
transform) is engine/kv_perplexity.py, which engine/kv_calibration.py also runs to measure
the per-level figures that the engine's ``delta_ppl_est`` is weighted from; this harness
adds eviction and the store.

KV bytes are for the final 2,048-token past in each setting, metadata included, against
the same past held in FP16.

    python bench/kv_quality.py [--model smollm2-135m-instruct | --model-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The measurement core (model on a numpy past, the segment loop, the quantizing transform)
# is the engine's, shared with its KV calibration; kv_ab.py reaches it through the names
# below too.
from inferos.engine.kv_perplexity import (  # noqa: E402
    LICENCE_TEXTS,
    Past,
    PastModel,
    Transform,
    log_softmax,
    open_model,
    quantized,
    read_text,
    score_segments,
    token_ids,
)
from inferos.kvstore.accounting import ModelKvShape, kv_bytes, memory_report  # noqa: E402
from inferos.kvstore.importance import attention_proxy, semantic_proxy  # noqa: E402
from inferos.kvstore.levels import Level  # noqa: E402
from inferos.kvstore.quantize import INT4, INT8  # noqa: E402
from inferos.kvstore.rotary import compacted_shift, rotate_keys  # noqa: E402
from inferos.kvstore.store import KvStore, KvStoreConfig  # noqa: E402

DEFAULT_TEXTS = LICENCE_TEXTS
Model = PastModel

__all__ = ["DEFAULT_TEXTS", "SHAPE", "Model", "Past", "load", "log_softmax", "main",
           "resolve_folder"]

BLOCK = 32


def resolve_folder(model: str, model_dir: str | None) -> Path:
    if model_dir:
        return Path(model_dir)
    try:
        from inferos.engine import prepare  # the engine core's preparation
    except ImportError as exc:
        raise SystemExit(f"engine core not available ({exc}); pass --model-dir") from exc
    folder = prepare.prepared_folder(model)
    if folder is None:
        raise SystemExit(f"{model} is not prepared: run `inferos model prepare {model}`")
    return Path(folder)


def load(folder: Path, threads: int) -> tuple[Model, object]:
    model = open_model(folder, threads)
    return model, model.tokenizer


def mixed(group: int, sinks: int, recent: int) -> Transform:
    def transform(past: Past, ids: np.ndarray) -> tuple[Past, int]:
        keys, values = past
        p = keys[0].shape[1]
        store = KvStore(KvStoreConfig(group_size=group, block_tokens=BLOCK, sink_tokens=sinks,
                                      recent_window=recent, host_pool_bytes=2**62))
        store.put(ids[:p], keys, values)
        store.apply_policy()
        full = p - p % BLOCK
        got_k, got_v = store.get(ids[:p])
        out_k = [np.concatenate([gk, k[:, full:]], axis=1) for gk, k in zip(got_k, keys,
                                                                             strict=True)]
        out_v = [np.concatenate([gv, v[:, full:]], axis=1) for gv, v in zip(got_v, values,
                                                                             strict=True)]
        stats = store.stats()
        LEVELS_SEEN.update({lvl: stats.chunks[lvl] for lvl in Level})
        nbytes = (stats.nbytes[Level.L0] // 2 + stats.nbytes[Level.L1] + stats.nbytes[Level.L2]
                  + kv_bytes(SHAPE[0], p - full, Level.L0, exact_itemsize=2))
        return (out_k, out_v), nbytes
    return transform


def block_importance(keys: list[np.ndarray], ranges: list[tuple[int, int]], recent: int
                     ) -> np.ndarray:
    """Mean over layers of the store's attention and similarity proxies per block."""
    score = np.zeros(len(ranges))
    for k in keys:
        attn = attention_proxy(k[:, -8:], k, ranges)
        window = k[:, -recent:] if recent else k[:, -1:]
        sem = np.array([semantic_proxy(k[:, a:b], window) for a, b in ranges])
        score += 0.5 * attn + 0.3 * sem
    return score / len(keys)


def evicting(fraction: float, sinks: int, recent: int, rope_base: float | None
             ) -> Transform:
    def transform(past: Past, ids: np.ndarray) -> tuple[Past, int]:
        keys, values = past
        p = keys[0].shape[1]
        ranges = [(a, a + BLOCK) for a in range(0, p - BLOCK + 1, BLOCK)
                  if a >= sinks and a + BLOCK <= p - recent]
        n_evict = int(len(ranges) * fraction)
        keep = np.ones(p, dtype=bool)
        if n_evict:
            order = np.argsort(block_importance(keys, ranges, recent))
            for i in order[:n_evict]:
                a, b = ranges[i]
                keep[a:b] = False
        kept_keys = [k[:, keep] for k in keys]
        if rope_base is not None and n_evict:
            shift = compacted_shift(keep)
            kept_keys = [rotate_keys(k, shift, rope_base) for k in kept_keys]
        out = (kept_keys, [v[:, keep] for v in values])
        return out, kv_bytes(SHAPE[0], int(keep.sum()), Level.L0, exact_itemsize=2)
    return transform


def then(first: Transform,
         second: Transform
         ) -> Transform:
    """Evict, then quantize what is left (bytes are the second step's)."""
    def transform(past: Past, ids: np.ndarray) -> tuple[Past, int]:
        return second(first(past, ids)[0], ids)
    return transform


SHAPE: list[ModelKvShape] = []
LEVELS_SEEN: dict[Level, int] = {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--model-dir")
    ap.add_argument("--text", nargs="*", default=list(DEFAULT_TEXTS))
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--segment", type=int, default=128)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--recent", type=int, default=64)
    ap.add_argument("--evict", type=float, nargs="*", default=[0.25, 0.5])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rope-base", type=float, default=100000.0,
                    help="rotary base of the model (SmolLM2: 100000), to re-rotate kept keys")
    args = ap.parse_args(argv)

    folder = resolve_folder(args.model, args.model_dir)
    model = open_model(folder, args.threads)
    SHAPE.append(model.shape)
    ids = token_ids(model, read_text(args.text), args.tokens)

    g, s, r = args.group_size, args.sinks, args.recent
    settings: dict[str, Transform] = {
        "int8": quantized(model.shape, INT8, g, s, r),
        "int4": quantized(model.shape, INT4, g, s, r),
        "mixed (decide_level)": mixed(g, s, r),
    }
    for f in args.evict:
        settings[f"evict {f:.0%}, keys re-rotated"] = evicting(f, s, r, args.rope_base)
        settings[f"evict {f:.0%}, old positions"] = evicting(f, s, r, None)
        settings[f"evict {f:.0%} + int4, re-rotated"] = then(
            evicting(f, s, r, args.rope_base), quantized(model.shape, INT4, g, s, r))

    print(f"model {folder} ({model.shape}), {args.tokens} tokens of {', '.join(args.text)}")
    print(f"segments of {args.segment}, group {g}, sinks {s}, recent window {r}")
    started = time.monotonic()
    reference, measured = score_segments(
        model, ids, args.segment, settings,
        on_segment=lambda done: print(f"  {done:5d} tokens  {time.monotonic() - started:6.1f} s",
                                      flush=True))
    scores = {"fp32 KV (reference)": reference, **measured}

    fp16_final = kv_bytes(model.shape, args.tokens - args.segment, Level.L0, exact_itemsize=2)
    ref_ppl = reference.ppl
    print()
    print(f"scored tokens: {reference.n} (after the first segment); "
          f"KV bytes for the last past ({args.tokens - args.segment} tokens), FP16 = "
          f"{fp16_final:,} B")
    print(f"| {'setting':32} | {'PPL':>8} | {'dPPL':>7} | {'KL mean':>8} | {'KL max':>7} "
          f"| {'KV bytes':>12} | {'vs FP16':>7} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 14}|{'-' * 9}|")
    for name, sc in scores.items():
        ppl = sc.ppl
        print(f"| {name:32} | {ppl:8.3f} | {ppl - ref_ppl:+7.3f} | {sc.kl / sc.n:8.5f} "
              f"| {sc.kl_max:7.4f} | {sc.nbytes:12,} | {sc.nbytes / fp16_final:7.3f} |")
    if LEVELS_SEEN:
        print("mixed, chunks per level at the last segment:",
              ", ".join(f"{lvl.name} {n}" for lvl, n in LEVELS_SEEN.items()))
    print()
    print("analytical KV memory of", args.tokens, "tokens:")
    for row in memory_report(model.shape, args.tokens, group_size=g):
        print(f"  {row.setting:34} {row.nbytes:>12,} B  {row.ratio_vs_fp16:6.3f} x FP16")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
