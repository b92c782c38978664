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

KV bytes are for the final 2,048-token past in each setting, metadata included, against
the same past held in FP16.

    python bench/kv_quality.py [--model smollm2-135m-instruct | --model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inferos.kvstore.accounting import ModelKvShape, kv_bytes, memory_report  # noqa: E402
from inferos.kvstore.importance import attention_proxy, semantic_proxy  # noqa: E402
from inferos.kvstore.levels import Level  # noqa: E402
from inferos.kvstore.quantize import (  # noqa: E402
    INT4,
    INT8,
    KEY_GROUP_AXIS,
    VALUE_GROUP_AXIS,
    QuantFormat,
    round_trip,
)
from inferos.kvstore.rotary import compacted_shift, rotate_keys  # noqa: E402
from inferos.kvstore.store import KvStore, KvStoreConfig  # noqa: E402

DEFAULT_TEXTS = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0")
BLOCK = 32

Past = tuple[list[np.ndarray], list[np.ndarray]]  # per layer [H, P, D] keys, values


@dataclass
class Model:
    """A plain onnxruntime session on the builder's graph (see RUNTIME_FACTS.md)."""

    session: object
    shape: ModelKvShape
    folder: Path

    def forward(self, ids: np.ndarray, past: Past) -> tuple[np.ndarray, Past]:
        """Logits [S, V] of ``ids`` after ``past``, and the present (past + ids) KV."""
        keys, values = past
        total = keys[0].shape[1] + len(ids)
        feed: dict[str, np.ndarray] = {
            "input_ids": ids[None, :].astype(np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
        }
        for i in range(self.shape.n_layers):
            feed[f"past_key_values.{i}.key"] = np.ascontiguousarray(keys[i][None])
            feed[f"past_key_values.{i}.value"] = np.ascontiguousarray(values[i][None])
        out = self.session.run(None, feed)  # type: ignore[attr-defined]
        n = self.shape.n_layers
        logits = out[0][0]
        present_k = [a[0] for a in out[1:1 + n]]
        present_v = [a[0] for a in out[1 + n:1 + 2 * n]]
        return logits, (present_k, present_v)


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
    import onnxruntime as ort
    from tokenizers import Tokenizer

    onnx_files = sorted(folder.glob("*.onnx"))
    if not onnx_files:
        raise SystemExit(f"no .onnx file in {folder}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_files[0]), opts, providers=["CPUExecutionProvider"])
    kv_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    if kv_inputs[0].type != "tensor(float)":
        raise SystemExit(f"need a float32-KV graph, got {kv_inputs[0].type}")
    # The graph leaves head_dim symbolic; the builder's genai_config.json states it.
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    shape = ModelKvShape(len(kv_inputs) // 2, int(decoder["num_key_value_heads"]),
                         int(decoder["head_size"]))
    return Model(session, shape, folder), Tokenizer.from_file(str(folder / "tokenizer.json"))


def protected(p: int, sinks: int, recent: int) -> slice:
    """The transformable middle of a past of ``p`` tokens."""
    return slice(min(sinks, p), max(min(sinks, p), p - recent))


def quantized(fmt: QuantFormat, group: int, sinks: int, recent: int
              ) -> Callable[[Past, np.ndarray], tuple[Past, int]]:
    def transform(past: Past, ids: np.ndarray) -> tuple[Past, int]:
        keys, values = past
        mid = protected(keys[0].shape[1], sinks, recent)
        n_mid = mid.stop - mid.start
        out_k, out_v = [], []
        for k, v in zip(keys, values, strict=True):
            k, v = k.copy(), v.copy()
            if n_mid:
                k[:, mid] = round_trip(k[:, mid], fmt, group, KEY_GROUP_AXIS)
                v[:, mid] = round_trip(v[:, mid], fmt, group, VALUE_GROUP_AXIS)
            out_k.append(k)
            out_v.append(v)
        level = Level.L1 if fmt is INT8 else Level.L2
        p = keys[0].shape[1]
        nbytes = (kv_bytes(SHAPE[0], p - n_mid, Level.L0, exact_itemsize=2)
                  + kv_bytes(SHAPE[0], n_mid, level, group_size=group))
        return (out_k, out_v), nbytes
    return transform


def mixed(group: int, sinks: int, recent: int) -> Callable[[Past, np.ndarray], tuple[Past, int]]:
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
             ) -> Callable[[Past, np.ndarray], tuple[Past, int]]:
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


def then(first: Callable[[Past, np.ndarray], tuple[Past, int]],
         second: Callable[[Past, np.ndarray], tuple[Past, int]]
         ) -> Callable[[Past, np.ndarray], tuple[Past, int]]:
    """Evict, then quantize what is left (bytes are the second step's)."""
    def transform(past: Past, ids: np.ndarray) -> tuple[Past, int]:
        return second(first(past, ids)[0], ids)
    return transform


SHAPE: list[ModelKvShape] = []
LEVELS_SEEN: dict[Level, int] = {}


@dataclass
class Score:
    nll: float = 0.0
    kl: float = 0.0
    n: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    kl_max: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


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
    model, tokenizer = load(folder, args.threads)
    SHAPE.append(model.shape)
    text = "\n\n".join(Path(p).read_text(encoding="utf-8") for p in args.text)
    ids = np.array(tokenizer.encode(text).ids, dtype=np.int64)  # type: ignore[attr-defined]
    if len(ids) < args.tokens + 1:
        raise SystemExit(f"text has {len(ids)} tokens, need {args.tokens + 1}")
    ids = ids[:args.tokens + 1]  # one more: the last position's next token is scored too

    g, s, r = args.group_size, args.sinks, args.recent
    settings: dict[str, Callable[[Past, np.ndarray], tuple[Past, int]]] = {
        "int8": quantized(INT8, g, s, r),
        "int4": quantized(INT4, g, s, r),
        "mixed (decide_level)": mixed(g, s, r),
    }
    for f in args.evict:
        settings[f"evict {f:.0%}, keys re-rotated"] = evicting(f, s, r, args.rope_base)
        settings[f"evict {f:.0%}, old positions"] = evicting(f, s, r, None)
        settings[f"evict {f:.0%} + int4, re-rotated"] = then(
            evicting(f, s, r, args.rope_base), quantized(INT4, g, s, r))
    scores = {name: Score() for name in ["fp32 KV (reference)", *settings]}

    print(f"model {folder} ({model.shape}), {args.tokens} tokens of {', '.join(args.text)}")
    print(f"segments of {args.segment}, group {g}, sinks {s}, recent window {r}")
    h, d = model.shape.n_kv_heads, model.shape.head_dim
    empty: Past = ([np.zeros((h, 0, d), np.float32)] * model.shape.n_layers,
                   [np.zeros((h, 0, d), np.float32)] * model.shape.n_layers)
    past = empty
    started = time.monotonic()
    for start in range(0, args.tokens, args.segment):
        seg = ids[start:min(start + args.segment, args.tokens)]
        targets = ids[start + 1:start + 1 + len(seg)]
        t0 = time.monotonic()
        logits, present = model.forward(seg, past)
        ref = log_softmax(logits)
        scores["fp32 KV (reference)"].seconds += time.monotonic() - t0
        if start > 0:
            ref_nll = -ref[np.arange(len(seg)), targets]
            p_ref = np.exp(ref)
            sc = scores["fp32 KV (reference)"]
            sc.nll += float(ref_nll.sum())
            sc.n += len(seg)
            sc.nbytes = kv_bytes(model.shape, start, Level.L0, exact_itemsize=2)
            for name, transform in settings.items():
                t0 = time.monotonic()
                changed, nbytes = transform(past, ids)
                logits_q, _ = model.forward(seg, changed)
                got = log_softmax(logits_q)
                kl = (p_ref * (ref - got)).sum(axis=-1)
                sc = scores[name]
                sc.nll += float(-got[np.arange(len(seg)), targets].sum())
                sc.kl += float(kl.sum())
                sc.kl_max = max(sc.kl_max, float(kl.max()))
                sc.n += len(seg)
                sc.nbytes = nbytes
                sc.seconds += time.monotonic() - t0
        past = present
        print(f"  {start + len(seg):5d} tokens  {time.monotonic() - started:6.1f} s", flush=True)

    fp16_final = kv_bytes(model.shape, args.tokens - args.segment, Level.L0, exact_itemsize=2)
    ref_ppl = float(np.exp(scores["fp32 KV (reference)"].nll / scores["fp32 KV (reference)"].n))
    print()
    print(f"scored tokens: {scores['fp32 KV (reference)'].n} (after the first segment); "
          f"KV bytes for the last past ({args.tokens - args.segment} tokens), FP16 = "
          f"{fp16_final:,} B")
    print(f"| {'setting':32} | {'PPL':>8} | {'dPPL':>7} | {'KL mean':>8} | {'KL max':>7} "
          f"| {'KV bytes':>12} | {'vs FP16':>7} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 14}|{'-' * 9}|")
    for name, sc in scores.items():
        ppl = float(np.exp(sc.nll / sc.n))
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
