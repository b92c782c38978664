"""Perplexity and KL of a model whose past KV is transformed, against the exact past.

The measurement core of the engine's KV calibration (``engine/kv_calibration.py``) and of
the KV quality benchmarks (``bench/kv_quality.py``, ``bench/kv_ab.py``); the llama.cpp
cache-type benchmark reuses its scoring and text.

Method. The text (by default the GPL-3 and Apache-2.0 licences that every Debian machine
has in /usr/share/common-licenses) is tokenized and cut to a number of tokens. The model
runs over it in segments. Before each segment, every setting takes the full-precision
past KV of the reference run and transforms it (``quantized``: quantize -> dequantize
with kvstore's INT8/INT4 KIVI quantizers, leaving the first ``sinks`` and the last
``recent`` tokens exact, as the store's policy does; a bench adds eviction and the store
itself), then runs the segment on that past. The reference runs the same segment on the
untouched past. Per scored token: the negative log-likelihood of the next token (->
perplexity) and KL(p_exact || p_setting) of the next-token distributions, with their
squares for standard errors. The first segment has no past to transform and is not
scored.

``PastModel`` feeds the builder's graph a numpy past in each run (RUNTIME_FACTS.md: the
outputs are logits, then every present key, then every present value). It is slower than
the engine's shared buffers, but the past is an ordinary array a setting can transform.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from inferos.errors import ModelError
from inferos.kvstore.accounting import ModelKvShape, kv_bytes
from inferos.kvstore.levels import LEVEL_FORMATS, Level
from inferos.kvstore.quantize import KEY_GROUP_AXIS, VALUE_GROUP_AXIS, QuantFormat, round_trip

__all__ = [
    "LICENCE_TEXTS",
    "Past",
    "PastModel",
    "Score",
    "Transform",
    "log_softmax",
    "open_model",
    "quantized",
    "read_text",
    "score_segments",
    "token_ids",
    "unprotected",
]

LICENCE_TEXTS: Final = ("/usr/share/common-licenses/GPL-3",
                        "/usr/share/common-licenses/Apache-2.0")

Past = tuple[list[np.ndarray], list[np.ndarray]]
"""Per layer, keys and values shaped [kv_heads, past_len, head_dim], float32."""
Transform = Callable[[Past, np.ndarray], tuple[Past, int]]
"""(exact past, token ids) -> (the past a setting would hold, its bytes)."""


@dataclass
class PastModel:
    """A plain onnxruntime session on the builder's graph, fed its past KV as numpy."""

    session: Any  # onnxruntime.InferenceSession
    tokenizer: Any  # tokenizers.Tokenizer
    shape: ModelKvShape
    folder: Path

    def empty_past(self) -> Past:
        h, d = self.shape.n_kv_heads, self.shape.head_dim
        return ([np.zeros((h, 0, d), np.float32)] * self.shape.n_layers,
                [np.zeros((h, 0, d), np.float32)] * self.shape.n_layers)

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
        n = self.shape.n_layers  # outputs: logits, every present key, every present value
        # by name: graphs of layout 3 also output hidden_states (first, in the builder's order)
        names = ["logits"] + [f"present.{i}.key" for i in range(n)] + \
            [f"present.{i}.value" for i in range(n)]
        out = self.session.run(names, feed)
        present_k = [a[0] for a in out[1:1 + n]]
        present_v = [a[0] for a in out[1 + n:1 + 2 * n]]
        return out[0][0], (present_k, present_v)


def open_model(folder: Path, threads: int | None = None) -> PastModel:
    """The prepared model in ``folder`` on onnxruntime's CPU provider."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from inferos.engine.ort_session import inference_session

    try:
        decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = inference_session(folder / decoder["filename"], opts,
                                    ["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{folder} is not a prepared model: {exc}") from exc
    except Exception as exc:  # onnxruntime's own errors have no common base class
        raise ModelError(f"onnxruntime could not load {folder}: {exc}") from exc
    kv_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    if not kv_inputs or kv_inputs[0].type != "tensor(float)":
        raise ModelError(f"{folder}: measuring KV levels needs a float32-KV graph, got "
                         f"{kv_inputs[0].type if kv_inputs else 'no past_key_values input'}")
    # The graph leaves head_dim symbolic; the builder's genai_config.json states it.
    shape = ModelKvShape(len(kv_inputs) // 2, int(decoder["num_key_value_heads"]),
                         int(decoder["head_size"]))
    return PastModel(session, tokenizer, shape, folder)


def read_text(paths: Sequence[str | Path]) -> str:
    try:
        return "\n\n".join(Path(p).read_text(encoding="utf-8") for p in paths)
    except OSError as exc:
        raise ModelError(f"the calibration text is not readable: {exc}") from exc


def token_ids(model: PastModel, text: str, tokens: int) -> np.ndarray:
    """The first ``tokens`` + 1 ids of ``text`` (the last position's next token is scored)."""
    ids = np.array(model.tokenizer.encode(text).ids, dtype=np.int64)
    if len(ids) < tokens + 1:
        raise ModelError(f"the text has {len(ids)} tokens, need {tokens + 1}")
    return ids[:tokens + 1]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def unprotected(p: int, sinks: int, recent: int) -> slice:
    """The transformable middle of a past of ``p`` tokens: not a sink, not recent."""
    return slice(min(sinks, p), max(min(sinks, p), p - recent))


def quantized(shape: ModelKvShape, fmt: QuantFormat, group: int, sinks: int, recent: int
              ) -> Transform:
    """Every unprotected past token quantized and dequantized (KIVI grouping); bytes as the
    store would count them, protected tokens at FP16."""
    level = next(lvl for lvl, f in LEVEL_FORMATS.items() if f is fmt)

    def transform(past: Past, ids: np.ndarray) -> tuple[Past, int]:
        keys, values = past
        p = keys[0].shape[1]
        mid = unprotected(p, sinks, recent)
        n_mid = mid.stop - mid.start
        out_k, out_v = [], []
        for k, v in zip(keys, values, strict=True):
            k, v = k.copy(), v.copy()
            if n_mid:
                k[:, mid] = round_trip(k[:, mid], fmt, group, KEY_GROUP_AXIS)
                v[:, mid] = round_trip(v[:, mid], fmt, group, VALUE_GROUP_AXIS)
            out_k.append(k)
            out_v.append(v)
        nbytes = (kv_bytes(shape, p - n_mid, Level.L0, exact_itemsize=2)
                  + kv_bytes(shape, n_mid, level, group_size=group))
        return (out_k, out_v), nbytes
    return transform


@dataclass
class Score:
    """What one setting scored over ``n`` tokens: sums of the NLL, of the KL against the
    reference and of their squares (for standard errors); last bytes, time."""

    nll: float = 0.0
    kl: float = 0.0
    n: int = 0
    kl_sq: float = 0.0
    dnll_sq: float = 0.0  # per-token NLL minus the reference's, squared
    nbytes: int = 0
    seconds: float = 0.0
    kl_max: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ppl(self) -> float:
        return float(np.exp(self.nll / self.n)) if self.n else math.nan

    def implied_delta_ppl(self, reference: Score) -> tuple[float, float]:
        """The ΔPPL that the mean KL implies (module docstring), and its standard error."""
        mean = self.kl / self.n
        var = max(self.kl_sq / self.n - mean * mean, 0.0)
        grown = reference.ppl * math.exp(mean)
        return grown - reference.ppl, grown * math.sqrt(var / self.n)

    def observed_delta_ppl(self, reference: Score) -> tuple[float, float]:
        """Perplexity minus the reference's on the same tokens, and its standard error."""
        mean = (self.nll - reference.nll) / self.n
        var = max(self.dnll_sq / self.n - mean * mean, 0.0)
        return self.ppl - reference.ppl, self.ppl * math.sqrt(var / self.n)


def score_segments(model: PastModel, ids: np.ndarray, segment: int,
                   settings: Mapping[str, Transform],
                   on_segment: Callable[[int], object] | None = None
                   ) -> tuple[Score, dict[str, Score]]:
    """The reference (exact past) and each setting scored over ``ids[:-1]`` in segments.

    ``ids`` holds one token more than is run: the last position's next token is scored.
    ``on_segment(tokens_done)`` is called after each segment (a bench prints progress).
    """
    tokens = len(ids) - 1
    reference = Score()
    scores = {name: Score() for name in settings}
    past = model.empty_past()
    for start in range(0, tokens, segment):
        seg = ids[start:min(start + segment, tokens)]
        targets = ids[start + 1:start + 1 + len(seg)]
        rows = np.arange(len(seg))
        t0 = time.monotonic()
        logits, present = model.forward(seg, past)
        ref = log_softmax(logits)
        reference.seconds += time.monotonic() - t0
        if start > 0:
            p_ref = np.exp(ref)
            ref_nll = -ref[rows, targets]
            reference.nll += float(ref_nll.sum())
            reference.n += len(seg)
            reference.nbytes = kv_bytes(model.shape, start, Level.L0, exact_itemsize=2)
            for name, transform in settings.items():
                t0 = time.monotonic()
                changed, nbytes = transform(past, ids)
                got = log_softmax(model.forward(seg, changed)[0])
                kl = (p_ref * (ref - got)).sum(axis=-1)
                nll = -got[rows, targets]
                sc = scores[name]
                sc.nll += float(nll.sum())
                sc.kl += float(kl.sum())
                sc.kl_sq += float((kl * kl).sum())
                sc.dnll_sq += float(((nll - ref_nll) ** 2).sum())
                sc.kl_max = max(sc.kl_max, float(kl.max()))
                sc.n += len(seg)
                sc.nbytes = nbytes
                sc.seconds += time.monotonic() - t0
        past = present
        if on_segment is not None:
            on_segment(start + len(seg))
    return reference, scores
