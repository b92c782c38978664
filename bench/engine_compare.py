"""The embedded engine against the runtimes Lemonade runs, on the same model, in one run:
prefill and decode tokens/s at prompts of 128, 512 and 2,048 tokens, and peak RSS, for

  ours      this project's engine core (``inferos.engine.runtime``: plain onnxruntime,
            static KV buffers bound through IOBinding, prefill in 256-token chunks)
  genai     onnxruntime-genai's ``Generator`` (Lemonade's ONNX recipes), same ONNX folder
  llamacpp  llama.cpp through llama-cpp-python (Lemonade's GGUF recipe), on the GGUF the
            ONNX model was prepared from. Its weights are Q4_1 while ours and genai's are
            fp32 (or ``--precision``): the table says so on every row.

Method. Each runtime runs in its own worker process (``--worker NAME``, which prints one
JSON line), so that its peak RSS (``ru_maxrss``) is its own and the runtimes do not share
caches or allocators. The parent runs ``--repeats`` rounds; each round starts one worker
per runtime, in an order rotated every round so that drift in this machine's speed falls
on all three alike, and reports medians over the rounds (peak RSS: the largest).

Inside a worker: load the model (timed), one untimed warm-up generation at the largest
length (the allocator's and page cache's first-touch costs are paid there, not in a
measured run), then one greedy (temperature 0) generation per length. Prompts are the
GPL-3 and Apache-2.0 licences from /usr/share/common-licenses, tokenized by each runtime's
own tokenizer (no BOS, no chat template: plain text, so greedy decoding runs on rather
than ending its turn) and cut to exactly N tokens, each run from a different offset whose
first token differs from the previous run's, so no runtime can reuse a cached prefix
(ours checks ``cached_tokens == 0`` on its first event). The parent prints how far the
other two runtimes' prompts and greedy tokens agree with ours: genai runs the same graph
and tokenizer, so both should agree in full; llama.cpp has the same vocabulary but its
pre-tokenizer splits runs of spaces differently, and its weights differ.

  prefill tok/s  N / time to the first generated token, from the call that starts the
                 request: for genai that includes creating its ``Generator`` (which
                 allocates its KV buffer); for llama.cpp, ``generate`` after ``reset``.
                 Each runtime batches the prompt its own way (ours 256-token chunks,
                 genai the whole prompt, llama.cpp ``n_batch`` 512).
  decode tok/s   (tokens produced - 1) / time from the first to the last token: one
                 forward pass plus greedy sampling per token, whatever each runtime's
                 Python loop adds included. Counted from the tokens actually produced
                 (an end-of-text token ends a run early; "tokens" is the fewest any
                 round produced).

Every worker also reads /proc/stat to measure how much CPU other processes used while it
measured: on a shared 2-core machine that is what spoils a figure (llama.cpp's threads
collapse when a core is taken), so each round prints it and the report warns above
0.15 cores.

All three get ``--threads`` (2) and the same context (the largest prompt plus the decode
tokens): ours ``EngineOptions(threads, ctx_size)``; genai through a copy of the model's
``genai_config.json`` with ``session_options.intra_op_num_threads`` set, in a temporary
folder whose other files are symlinks to the prepared ones, and ``max_length`` = context;
llama.cpp ``n_threads`` = ``n_threads_batch``, ``n_ctx`` = context, default f16 KV.
Everything else is each runtime's default: genai's ONNX Runtime threads spin while idle,
ours do not (to leave the core to the server's event loop); ours' prefix cache is on, so
each finished generation's KV is parked in host memory after its last token (not timed,
but in its peak RSS: the report says how much).

Targets (issue 3), reported, not asserted: decode >= 1.1x onnxruntime-genai at every
length, and >= llama.cpp at 2,048.

    python bench/engine_compare.py [--repeats 3] [--max-tokens 64] [--precision fp32]
    python bench/engine_compare.py --quick        # 128 and 512 only, 1 round, 16 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "smollm2-135m-instruct"
RUNTIMES = ("ours", "genai", "llamacpp")
LABELS = {"ours": "ours (engine core)", "genai": "onnxruntime-genai", "llamacpp": "llama.cpp"}
TEXTS = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0")
STRIDE = 211  # tokens between the starts of successive prompts
BUSY_WARNING = 0.15  # cores used by other processes beyond which the figures are suspect

# Start(prompt, max_tokens): the generated token ids; setup and prefill before the first.
Start = Callable[[list[int], int], Iterator[int]]


@dataclass(frozen=True)
class Runtime:
    """A loaded runtime as a worker drives it."""

    encode: Callable[[str], list[int]]
    start: Start
    extra: Callable[[], dict[str, object]] = dict  # runtime-specific figures for the report


@dataclass(frozen=True)
class Timing:
    """One generation: seconds to the first token, then from the first to the last."""

    prefill_s: float
    decode_s: float
    tokens: list[int]


# -- workers: one runtime each, in its own process --------------------------------------
def prompts(ids: list[int], lengths: list[int]) -> list[list[int]]:
    """Prompts of exactly ``lengths`` tokens from ``ids``, each starting with a different
    token from the one before, so no prefix of one is cached from the previous."""
    out: list[list[int]] = []
    offset, previous = 0, None
    for n in lengths:
        while previous is not None and ids[offset] == ids[previous]:
            offset += 1
        if offset + n > len(ids):
            raise SystemExit(f"the text has {len(ids)} tokens; {offset + n} needed")
        out.append(ids[offset:offset + n])
        previous, offset = offset, offset + STRIDE
    return out


def measure(start: Start, prompt: list[int], max_tokens: int) -> Timing:
    """Times ``start(prompt, max_tokens)``, an iterator of generated token ids that does
    the request's setup and prefill before its first token."""
    stamps: list[float] = []
    produced: list[int] = []
    began = time.perf_counter()
    for token in start(prompt, max_tokens):
        stamps.append(time.perf_counter())
        produced.append(token)
        if len(produced) >= max_tokens:
            break
    if not stamps:
        raise RuntimeError("no token was generated")
    return Timing(stamps[0] - began, stamps[-1] - stamps[0], produced)


def worker_ours(folder: Path, threads: int, ctx: int) -> Runtime:
    from inferos.engine.runtime import EngineOptions, SamplingParams, load_model

    model = load_model(str(folder), EngineOptions(threads=threads, ctx_size=ctx))

    def start(prompt: list[int], max_tokens: int) -> Iterator[int]:
        for i, event in enumerate(model.generate(prompt, SamplingParams(max_tokens=max_tokens))):
            if i == 0 and event.cached_tokens:
                raise RuntimeError(f"{event.cached_tokens} prompt tokens came from the cache")
            yield event.token_id

    def parked() -> dict[str, object]:
        # Its prefix cache (on by default) parks each finished generation's KV in host
        # memory; that counts in its peak RSS and the others hold nothing like it.
        levels = model.stats().get("kv_levels") or {}
        return {"parked_kv_mib": sum(v.get("bytes", 0) for v in levels.values()) / 2**20}

    return Runtime(model.encode, start, parked)


def genai_folder(folder: Path, threads: int, work: Path) -> Path:
    """``folder`` with its genai_config.json setting the thread count (the rest symlinked)."""
    for item in folder.iterdir():
        if item.name != "genai_config.json":
            (work / item.name).symlink_to(item)
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    (work / "genai_config.json").write_text(json.dumps(config, indent=2))
    return work


def worker_genai(folder: Path, threads: int, ctx: int) -> Runtime:
    import numpy as np
    import onnxruntime_genai as og

    work = tempfile.TemporaryDirectory(prefix="engine-compare-genai-")  # removed at exit
    model = og.Model(str(genai_folder(folder, threads, Path(work.name))))
    tokenizer = og.Tokenizer(model)

    def encode(text: str) -> list[int]:
        return [int(t) for t in tokenizer.encode(text)]

    def start(prompt: list[int], max_tokens: int) -> Iterator[int]:
        assert work  # referenced here, so the folder lives as long as the model
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=ctx, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))  # the prefill pass
        # generate_next_token samples from the logits it has, then the next call runs the
        # model on that token first: the first call is the end of prefill.
        while not generator.is_done():
            generator.generate_next_token()
            yield int(generator.get_next_tokens()[0])

    return Runtime(encode, start)


def worker_llamacpp(threads: int, ctx: int) -> Runtime:
    import llama_cpp

    from inferos.engine.prepare import SOURCES, gguf_path

    llm = llama_cpp.Llama(model_path=str(gguf_path(SOURCES[MODEL])), n_ctx=ctx,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    eos = llm.token_eos()

    def encode(text: str) -> list[int]:
        return list(llm.tokenize(text.encode(), add_bos=False, special=False))

    def start(prompt: list[int], max_tokens: int) -> Iterator[int]:
        llm.reset()  # forget the previous run's tokens: no prefix match, a full prefill
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            yield token
            if token == eos:
                return

    return Runtime(encode, start)


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (None without /proc)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_worker(args: argparse.Namespace) -> int:
    lengths = sorted(args.lengths)
    ctx = lengths[-1] + args.max_tokens + 1
    began = time.perf_counter()
    if args.worker == "llamacpp":
        runtime = worker_llamacpp(args.threads, ctx)
        weights = "Q4_1"
    else:
        folder = Path(args.model_dir)
        maker = worker_ours if args.worker == "ours" else worker_genai
        runtime = maker(folder, args.threads, ctx)
        weights = json.loads((folder / "manifest.json").read_text()).get("precision", "?")
    load_s = time.perf_counter() - began
    text = "\n\n".join(Path(p).read_text(encoding="utf-8") for p in TEXTS)
    ids = runtime.encode(text)
    warm, *timed_prompts = prompts(ids, [lengths[-1], *lengths])
    # Other processes' CPU use while this worker measures: on a shared 2-core machine it
    # is what makes a figure untrustworthy, so the table shows it.
    busy0, own0, wall0 = busy_cpu_s(), own_cpu_s(), time.perf_counter()
    measure(runtime.start, warm, min(8, args.max_tokens))
    runs = []
    for prompt in timed_prompts:
        t = measure(runtime.start, prompt, args.max_tokens)
        runs.append({"length": len(prompt), "prefill_s": t.prefill_s, "decode_s": t.decode_s,
                     "tokens": t.tokens, "prompt": prompt})
    busy1, own1, wall1 = busy_cpu_s(), own_cpu_s(), time.perf_counter()
    others = None if busy0 is None or busy1 is None else \
        max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"runtime": args.worker, "weights": weights, "load_s": load_s,
                      "peak_rss_mib": peak_kib / 1024, "others_cpu": others, "runs": runs,
                      **runtime.extra()}))
    return 0


# -- the parent: rounds of workers, then the table --------------------------------------
def spawn(name: str, args: argparse.Namespace, folder: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
           "--model-dir", str(folder), "--threads", str(args.threads),
           "--max-tokens", str(args.max_tokens), "--lengths", *map(str, args.lengths)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"worker {name} failed ({run.returncode}):\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def tok_s(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    lengths = sorted(args.lengths)
    prefill: dict[tuple[str, int], float] = {}
    decode: dict[tuple[str, int], float] = {}
    print()
    print(f"| {'runtime':18} | {'weights':7} | {'prompt':>6} | {'prefill tok/s':>13} "
          f"| {'decode tok/s':>12} | {'tokens':>6} | {'peak RSS MiB':>12} | {'load s':>6} |")
    print(f"|{'-' * 20}|{'-' * 9}|{'-' * 8}|{'-' * 15}|{'-' * 14}|{'-' * 8}|{'-' * 14}|"
          f"{'-' * 8}|")
    for name in RUNTIMES:
        workers = results[name]
        rss = max(w["peak_rss_mib"] for w in workers)
        load = statistics.median(w["load_s"] for w in workers)
        for n in lengths:
            runs = [r for w in workers for r in w["runs"] if r["length"] == n]
            prefill[name, n] = statistics.median(tok_s(n, r["prefill_s"]) for r in runs)
            decode[name, n] = statistics.median(
                tok_s(len(r["tokens"]) - 1, r["decode_s"]) for r in runs)
            produced = min(len(r["tokens"]) for r in runs)
            print(f"| {LABELS[name]:18} | {workers[0]['weights']:7} | {n:6d} "
                  f"| {prefill[name, n]:13.1f} | {decode[name, n]:12.1f} | {produced:6d} "
                  f"| {rss:12.0f} | {load:6.2f} |")
    print()
    print(f"| {'prompt':>6} | {'decode ours/genai':>17} | {'decode ours/llama.cpp':>21} "
          f"| {'prefill ours/genai':>18} | {'prefill ours/llama.cpp':>22} |")
    print(f"|{'-' * 8}|{'-' * 19}|{'-' * 23}|{'-' * 20}|{'-' * 24}|")
    for n in lengths:
        print(f"| {n:6d} | {decode['ours', n] / decode['genai', n]:17.2f} "
              f"| {decode['ours', n] / decode['llamacpp', n]:21.2f} "
              f"| {prefill['ours', n] / prefill['genai', n]:18.2f} "
              f"| {prefill['ours', n] / prefill['llamacpp', n]:22.2f} |")
    rss = {name: max(w["peak_rss_mib"] for w in results[name]) for name in RUNTIMES}
    print(f"peak RSS ours/genai {rss['ours'] / rss['genai']:.2f}, "
          f"ours/llama.cpp {rss['ours'] / rss['llamacpp']:.2f} "
          f"(llama.cpp maps Q4_1 weights, ours and genai hold "
          f"{results['ours'][0]['weights']} ones)")
    parked = results["ours"][-1].get("parked_kv_mib")
    if parked is not None:
        print(f"ours' peak RSS includes the KV its prefix cache (on by default) parked from "
              f"finished generations: {parked:.0f} MiB at the end of a worker")
    print()
    genai_ok = all(decode["ours", n] >= 1.1 * decode["genai", n] for n in lengths)
    print(f"target decode >= 1.1x onnxruntime-genai at every length: "
          f"{'met' if genai_ok else 'NOT met'}")
    if 2048 in lengths:
        llama_ok = decode["ours", 2048] >= decode["llamacpp", 2048]
        print(f"target decode >= llama.cpp at 2048: {'met' if llama_ok else 'NOT met'} "
              f"(llama.cpp on Q4_1 weights)")

    # Same vocabulary, but llama.cpp's pre-tokenizer splits runs of spaces differently.
    first = {name: results[name][0]["runs"] for name in RUNTIMES}
    print()
    for name in RUNTIMES[1:]:
        pairs = list(zip(first["ours"], first[name], strict=True))
        same = ", ".join(f"{a['length']}: {common_prefix(a['prompt'], b['prompt'])}"
                         for a, b in pairs)
        agree = ", ".join(f"{a['length']}: {common_prefix(a['tokens'], b['tokens'])}"
                          f"/{len(a['tokens'])}" for a, b in pairs)
        print(f"{LABELS[name]} vs ours, round 1: leading prompt tokens equal {same}; "
              f"leading greedy tokens equal {agree}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--max-tokens", type=int, default=64, help="decode tokens per run")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32",
                    help="weights of the ONNX model ours and genai run (int8: prepared on "
                         "first use, ~70 s)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: prompts of 128 and 512, 1 round, 16 decode tokens")
    ap.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.quick:
        args.lengths, args.repeats, args.max_tokens = [128, 512], 1, 16
    if args.max_tokens < 2:
        ap.error("--max-tokens must be at least 2 (decode speed is measured between tokens)")

    from inferos.engine.prepare import ensure_prepared

    folder = ensure_prepared(MODEL, precision=args.precision)
    ctx = max(args.lengths) + args.max_tokens + 1
    print(f"model {MODEL}: ONNX {args.precision} ({folder}) for ours and genai, "
          f"GGUF Q4_1 for llama.cpp")
    print(f"{args.threads} threads, context {ctx}, prompts {sorted(args.lengths)} tokens, "
          f"{args.max_tokens} decode tokens, {args.repeats} round(s), greedy; "
          f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    results: dict[str, list[dict]] = {name: [] for name in RUNTIMES}
    started = time.monotonic()
    for r in range(args.repeats):
        order = RUNTIMES[r % 3:] + RUNTIMES[:r % 3]
        for name in order:
            results[name].append(spawn(name, args, folder))
        others = ", ".join(f"{name} {cores(results[name][-1]['others_cpu'])}" for name in order)
        print(f"  round {r + 1}/{args.repeats} done, {time.monotonic() - started:.0f} s; "
              f"other processes' CPU use while measuring (cores): {others}", flush=True)
    report(results, args)
    busiest = max((w["others_cpu"] or 0.0) for ws in results.values() for w in ws)
    if busiest > BUSY_WARNING:
        print(f"\nWARNING: other processes used up to {busiest:.2f} cores while a runtime was "
              f"measured; with {args.threads} threads on {os.cpu_count()} CPUs the figures "
              f"above are not trustworthy (llama.cpp's threads suffer most). Run again on an "
              f"idle machine.")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
