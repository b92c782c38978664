"""KV store ON vs OFF on the real model: multi-turn chat TTFT, and parked-session memory
against quality. Both sides run in this one process, on the same weights.

Part 1, chat. ``--conversations`` (8) conversations of ``--turns`` (6) turns, interleaved
(turn 1 of every conversation, then turn 2, ...). Every user message is a different run
of paragraphs of real English text (/usr/share/common-licenses), about ``--message-tokens``
(200) tokens; every answer is ``--answer-tokens`` (16) greedy tokens; a conversation grows
to about 1,450 tokens. Three engines (``LoadedModel``) answer every request, in an order
that rotates from one request to the next, so machine noise hits them alike:

    OFF        ``prefix_cache=False``: every prompt is prefilled in full
    ON         the prefix cache with the default host pool (4 GiB) and the default live
               policy: parked KV follows decide_level (importance against the level
               thresholds; sinks and the recent window exact), so most of it sits at INT4
    ON, tight  the prefix cache with a host pool of ``--tight-fraction`` (0.40) of the
               FP16 size of the chats' parked KV at the end: parked KV goes to float16,
               then INT8 and INT4, and is dequantized back into the buffer when its
               conversation returns

Each engine keeps its own history (its own answers). TTFT is from the request (chat
template and tokenization included) to the first token, the same clock for all three.

Part 2, parked memory against quality. A text of ``--ppl-tokens`` (2,048) tokens is
parked at several lengths P (1,024 ... 1,792): the exact KV of tokens [0, P) goes into a
``KvStore`` whose host pool is a fraction of the FP16 size of those P tokens. The store
holds float32 L0 blocks in float16 first (sinks and recent window included), then
quantizes to INT8 and INT4, and as a last resort drops whole tail blocks, which are then
recomputed on top of what was restored (a recompute, not a saving: the targets do not
count such settings). The next ``--segment`` tokens are scored on the restored past
against the exact past: perplexity and KL divergence, as bench/kv_quality.py does.
Memory is the store's bytes, metadata included, against the same P tokens in FP16.

    python bench/kv_ab.py [--quick] [--model-dir DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import kv_quality  # noqa: E402

from inferos.engine.runtime import (  # noqa: E402
    EngineOptions,
    LoadedModel,
    SamplingParams,
    load_model,
)
from inferos.kvstore.accounting import ModelKvShape, kv_bytes  # noqa: E402
from inferos.kvstore.levels import Level  # noqa: E402
from inferos.kvstore.store import KvStore, KvStoreConfig  # noqa: E402

TEXTS = ("GPL-3", "Apache-2.0", "LGPL-2.1", "MPL-1.1", "GFDL-1.3", "Artistic", "CC0-1.0",
         "MPL-2.0")
SYSTEM = "You are a helpful assistant. Read what the user shares and comment on it briefly."


# -- part 1: chat -----------------------------------------------------------------------

@dataclass
class Side:
    name: str
    model: LoadedModel
    ttft: dict[tuple[int, int], float] = field(default_factory=dict)  # (turn, conv) -> s
    cached: dict[tuple[int, int], int] = field(default_factory=dict)
    prompt_len: dict[tuple[int, int], int] = field(default_factory=dict)
    history: list[list[dict[str, str]]] = field(default_factory=list)


def user_messages(model: LoadedModel, n: int, tokens: int) -> list[str]:
    """``n`` distinct passages of real text, ``tokens`` tokens each (cut at token
    boundaries, so a passage may start or end mid-sentence, as pasted text does)."""
    texts = [path.read_text(encoding="utf-8") for path in
             (Path("/usr/share/common-licenses") / name for name in TEXTS) if path.is_file()]
    ids = model.encode("\n\n".join(texts))
    if len(ids) < n * tokens:
        raise SystemExit(f"not enough text for {n} messages of {tokens} tokens")
    return [model.decode(ids[i * tokens:(i + 1) * tokens]).strip() for i in range(n)]


def one_request(side: Side, conv: int, turn: int, message: str, answer_tokens: int) -> None:
    history = side.history[conv]
    history.append({"role": "user", "content": message})
    model = side.model
    started = time.perf_counter()
    prompt = model.encode(model.chat_prompt(history))
    events = model.generate(prompt, SamplingParams(max_tokens=answer_tokens))
    first = next(events)
    side.ttft[turn, conv] = time.perf_counter() - started
    answer = [first.token_id] + [e.token_id for e in events]
    side.cached[turn, conv] = first.cached_tokens
    side.prompt_len[turn, conv] = len(prompt)
    history.append({"role": "assistant",
                    "content": model.decode([t for t in answer if t not in model.stop_ids])})


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def run_chat(args: argparse.Namespace, folder: Path) -> tuple[list[Side], ModelKvShape]:
    def load(**options: object) -> LoadedModel:
        return load_model(str(folder), EngineOptions(threads=args.threads, ctx_size=4096,
                                                     **options))  # type: ignore[arg-type]

    probe = load(prefix_cache=False)
    shape = probe.kv_shape
    model_shape = ModelKvShape(shape.layers, shape.kv_heads, shape.head_dim)
    fp16_per_token = kv_bytes(model_shape, 1, Level.L0, exact_itemsize=2)
    expected_tokens = args.conversations * (args.turns * (args.message_tokens + args.answer_tokens
                                                          + 10) + 40)
    tight_bytes = int(args.tight_fraction * expected_tokens * fp16_per_token)
    sides = [Side("OFF", probe), Side("ON", load()),
             Side("ON, tight", load(host_pool_bytes=tight_bytes))]
    messages = user_messages(probe, args.conversations * args.turns, args.message_tokens)
    for side in sides:
        side.history = [[{"role": "system", "content": SYSTEM}]
                        for _ in range(args.conversations)]
    print(f"chat: {args.conversations} conversations x {args.turns} turns, interleaved; "
          f"messages ~{args.message_tokens} tokens, answers {args.answer_tokens} tokens; "
          f"tight host pool {tight_bytes / 2**20:.1f} MiB "
          f"({args.tight_fraction:.0%} of FP16 for ~{expected_tokens} tokens)", flush=True)
    started = time.monotonic()
    request = 0
    for turn in range(args.turns):
        for conv in range(args.conversations):
            message = messages[conv * args.turns + turn]
            order = sides[request % len(sides):] + sides[:request % len(sides)]
            for side in order:
                one_request(side, conv, turn, message, args.answer_tokens)
            request += 1
        convs = range(args.conversations)
        lengths = [sides[0].prompt_len[turn, c] for c in convs]
        medians = [f"{s.name} TTFT p50 {p50([s.ttft[turn, c] for c in convs]) * 1000:.0f} ms"
                   for s in sides]
        print(f"  turn {turn + 1}: prompts {min(lengths)}-{max(lengths)} tokens, "
              f"{', '.join(medians)}  ({time.monotonic() - started:.0f} s)", flush=True)
    return sides, model_shape


def report_chat(sides: list[Side], shape: ModelKvShape) -> dict[str, float]:
    off = sides[0]
    later = [k for k in off.ttft if k[0] > 0]
    print()
    print("| engine     | TTFT p50 all | TTFT p50 turns 2+ | TTFT p90 turns 2+ | cached / prompt "
          "tokens | vs OFF p50 all | vs OFF p50 turns 2+ |")
    print("|------------|--------------|-------------------|-------------------|----------------"
          "-------|----------------|---------------------|")
    out: dict[str, float] = {}
    off_all, off_later = p50(list(off.ttft.values())), p50([off.ttft[k] for k in later])
    for side in sides:
        all_ = p50(list(side.ttft.values()))
        lat = [side.ttft[k] for k in later]
        p90 = float(np.percentile(lat, 90))
        cached, total = sum(side.cached.values()), sum(side.prompt_len.values())
        print(f"| {side.name:10} | {all_ * 1000:9.0f} ms | {p50(lat) * 1000:14.0f} ms "
              f"| {p90 * 1000:14.0f} ms | {cached:>7} / {total:<7} {cached / total:6.1%} "
              f"| {all_ / off_all:14.3f} | {p50(lat) / off_later:19.3f} |")
        out[side.name] = all_ / off_all
    print()
    print("parked KV at the end of the chat (the prefix cache's store, metadata included):")
    for side in sides[1:]:
        stats = side.model.stats()
        store, levels = stats["kv_store"], stats["kv_levels"]
        print(f"  {side.name:10} {store['bytes']:>12,} B for {store['blocks']} blocks; "
              f"FP16 of the same tokens {store['fp16_bytes']:>12,} B -> "
              f"{store['bytes'] / store['fp16_bytes']:.3f} x FP16; levels "
              + ", ".join(f"{name} {v['tokens']} tok" for name, v in levels.items())
              + f"; restore {store['restore_seconds']} s, park {store['save_seconds']} s "
              f"over {store['saves']} requests")
    return out


# -- part 2: parked memory against quality ----------------------------------------------

@dataclass
class Setting:
    name: str
    fraction: float | None  # host pool as a fraction of the FP16 size; None: no limit
    nll: float = 0.0
    kl: float = 0.0
    n: int = 0
    ratios: list[float] = field(default_factory=list)
    kept: list[float] = field(default_factory=list)
    levels: dict[str, int] = field(default_factory=dict)


def restored_past(model: kv_quality.Model, ids: np.ndarray, past: kv_quality.Past,
                  setting: Setting) -> tuple[kv_quality.Past, float, float]:
    """The past of ``ids`` as the store gives it back under ``setting``'s host pool, the
    dropped tail recomputed on top of it; its bytes against FP16, and the part restored."""
    keys, values = past
    p = keys[0].shape[1]
    fp16 = kv_bytes(model.shape, p, Level.L0, exact_itemsize=2)
    budget = 2**62 if setting.fraction is None else int(setting.fraction * fp16)
    store = KvStore(KvStoreConfig(host_pool_bytes=budget))
    store.put(ids[:p], keys, values)
    stats = store.stats()
    for level in Level:
        setting.levels[level.name] = setting.levels.get(level.name, 0) + stats.tokens.get(
            level, 0)
    got_k, got_v = store.get(ids[:p])
    n = got_k[0].shape[1] if got_k else 0
    if n < p:
        if n == 0:
            h, d = model.shape.n_kv_heads, model.shape.head_dim
            got_k = [np.zeros((h, 0, d), np.float32)] * model.shape.n_layers
            got_v = list(got_k)
        _, (got_k, got_v) = model.forward(ids[n:p], (got_k, got_v))
    return (got_k, got_v), stats.total_nbytes / fp16, n / p


def run_quality(args: argparse.Namespace, folder: Path) -> list[Setting]:
    model, tokenizer = kv_quality.load(folder, args.threads)
    kv_quality.SHAPE.append(model.shape)
    text = "\n\n".join(Path(p).read_text(encoding="utf-8") for p in kv_quality.DEFAULT_TEXTS)
    ids = np.array(tokenizer.encode(text).ids, dtype=np.int64)  # type: ignore[attr-defined]
    ids = ids[:args.ppl_tokens + 1]
    seg = args.segment
    parks = list(range(args.ppl_tokens // 2, args.ppl_tokens - seg + 1, seg))
    settings = [Setting("exact (no pressure)", None)] + [
        Setting(f"host pool {f:.0%} of FP16", f) for f in args.fractions]
    print(f"\nparked sessions: {len(ids) - 1} tokens of {', '.join(kv_quality.DEFAULT_TEXTS)}, "
          f"parked at {parks}, next {seg} tokens scored", flush=True)
    h, d = model.shape.n_kv_heads, model.shape.head_dim
    past: kv_quality.Past = ([np.zeros((h, 0, d), np.float32)] * model.shape.n_layers,
                             [np.zeros((h, 0, d), np.float32)] * model.shape.n_layers)
    ref_nll = 0.0
    ref_n = 0
    started = time.monotonic()
    for start in range(0, args.ppl_tokens, seg):
        chunk = ids[start:start + seg]
        if start in parks:
            targets = ids[start + 1:start + 1 + len(chunk)]
            logits, present = model.forward(chunk, past)
            ref = kv_quality.log_softmax(logits)
            p_ref = np.exp(ref)
            ref_nll += float(-ref[np.arange(len(chunk)), targets].sum())
            ref_n += len(chunk)
            for setting in settings:
                changed, ratio, kept = restored_past(model, ids, past, setting)
                got = kv_quality.log_softmax(model.forward(chunk, changed)[0])
                setting.nll += float(-got[np.arange(len(chunk)), targets].sum())
                setting.kl += float((p_ref * (ref - got)).sum())
                setting.n += len(chunk)
                setting.ratios.append(ratio)
                setting.kept.append(kept)
            print(f"  parked at {start}: {time.monotonic() - started:.0f} s", flush=True)
        else:
            _, present = model.forward(chunk, past)
        past = present
    ref_ppl = float(np.exp(ref_nll / ref_n))
    print()
    print(f"reference PPL (exact past) {ref_ppl:.3f} over {ref_n} scored tokens")
    print(f"| {'setting':26} | {'dPPL':>7} | {'KL mean':>8} | {'KV vs FP16':>10} | "
          f"{'memory':>7} | {'restored':>8} | levels (tokens, summed over parks)")
    print(f"|{'-' * 28}|{'-' * 9}|{'-' * 10}|{'-' * 12}|{'-' * 9}|{'-' * 10}|{'-' * 36}")
    for s in settings:
        ppl = float(np.exp(s.nll / s.n))
        s.nll = ppl - ref_ppl  # from here on: delta PPL
        ratio = float(np.mean(s.ratios))
        print(f"| {s.name:26} | {s.nll:+7.3f} | {s.kl / s.n:8.5f} | {ratio:10.3f} | "
              f"{ratio - 1:+7.1%} | {np.mean(s.kept):8.1%} | "
              + ", ".join(f"{k} {v}" for k, v in s.levels.items() if v))
    return settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--model-dir")
    ap.add_argument("--quick", action="store_true",
                    help="3 conversations x 3 turns, 768-token quality text (~1 minute)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--message-tokens", type=int, default=200)
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--tight-fraction", type=float, default=0.40)
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--segment", type=int, default=256)
    ap.add_argument("--fractions", type=float, nargs="*",
                    default=[0.70, 0.50, 0.45, 0.40, 0.35, 0.30, 0.25])
    ap.add_argument("--skip-chat", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        # smaller defaults; options given explicitly still win
        ap.set_defaults(conversations=3, turns=3, message_tokens=150, answer_tokens=8,
                        ppl_tokens=768, segment=128, fractions=[0.5, 0.4, 0.35])
    args = ap.parse_args(argv)
    folder = kv_quality.resolve_folder(args.model, args.model_dir)
    print(f"model {folder}, {args.threads} threads")

    ttft: dict[str, float] = {}
    if not args.skip_chat:
        sides, shape = run_chat(args, folder)
        ttft = report_chat(sides, shape)
        for side in sides:
            side.model.close()
        del sides
    settings = [] if args.skip_quality else run_quality(args, folder)

    print()
    print("targets:")
    if ttft:
        cut = 1 - ttft["ON"]
        print(f"  TTFT p50, chat, ON vs OFF: {cut:.1%} lower (target >= 50%): "
              f"{'met' if cut >= 0.5 else 'NOT met'}; ON, tight: {1 - ttft['ON, tight']:.1%} lower")
    for limit, goal in ((0.1, 0.60), (0.5, 0.75)):
        if not settings:
            break
        # A setting that dropped tokens saved memory by recomputing them: not counted.
        fits = [s for s in settings if s.nll <= limit and min(s.kept) == 1.0]
        best = min(fits, key=lambda s: float(np.mean(s.ratios)), default=None)
        if best is None:
            print(f"  parked KV at dPPL <= {limit}: no setting")
            continue
        change = float(np.mean(best.ratios)) - 1
        print(f"  parked KV at dPPL <= {limit}, every parked token restored: {best.name}, "
              f"memory {change:+.1%} vs FP16 at dPPL {best.nll:+.3f} (target -{goal:.0%}): "
              f"{'met' if -change >= goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
