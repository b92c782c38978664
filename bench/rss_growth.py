"""RSS growth per request of the embedded engine, in process, once its budget is reached.

A CPU-independent reproduction of issue 11 item 5 (bench/soak.py saw the engine's RSS less
its batch-buffer pages and parked KV grow ~50 MiB/h): the real model is loaded in this
process and driven through its ``BatchScheduler`` with varied shapes (prompt lengths
20-900 tokens, 1-4 sequences at a time, follow-up turns that hit the prefix cache, 1-24
new tokens), drawn from a fixed seed, so every variant runs the same requests. Growth is
measured per request, not per hour: the machine's cores are shared, and time says nothing.

    python bench/rss_growth.py --requests 400                 # the engine as it is
    python bench/rss_growth.py --variant all --requests 400   # each variant, one process each

Every ``--sample-every`` requests it records the RSS, smaps' anonymous and file-backed
RSS, glibc's ``mallinfo2`` (bytes malloc has from the system: heap arenas + mmapped
blocks, and how much of it is in use), the batch buffer's resident pages (mincore), the
parked KV and, with ``--tracemalloc``, the Python heap and its top growing allocation
sites. Once the parked KV has reached 90% of ``--host-pool-bytes`` (64 MiB: it fills in
tens of requests) and ``--warmup`` requests have run, it fits the least-squares slope in
MiB per 100 requests of: RSS; RSS less the batch buffer's resident pages and the parked
KV (``unbudgeted``: what the budget does not account for by part, the figure that must
be flat); malloc's system bytes; the Python heap.

Variants (``--variant``; ``all`` runs each in its own child process, same requests):
``base`` the engine as it is (it gives malloc's free heap pages back after each step that
ends a generation: ``release_free_heap``, engine/memory_budget.py); ``untrimmed`` the
engine without that, as it was before; and, each on top of ``untrimmed``, the other
candidates: ``no_arena`` SessionOptions.enable_cpu_mem_arena False; ``no_mem_pattern``
enable_mem_pattern False; ``same_as_requested`` the CPU arena's ``arena_extend_strategy``
kSameAsRequested (an OrtArenaCfg on the environment's shared allocator); ``arena_max2``
env MALLOC_ARENA_MAX=2; ``mmap_threshold`` mallopt(M_MMAP_THRESHOLD, 1 MiB) (glibc's
dynamic threshold off); ``trim_mmap`` and ``trim_thp_off`` (no transparent huge pages:
prctl PR_SET_THP_DISABLE) are ``base`` with those.

Speed (``--speed``): prefill and decode tokens/s, medians of ``--speed-runs`` generations
of 128 tokens (temperature 0.7, seed 1, speculation off) on 500-token prompts no prefix
cache serves. A trim runs only between generations (~2.3 ms each here), so it can cost a
generation nothing but page faults on memory it gave back. Measured alternately, 4
processes each (medians of 3 or 5 runs; decode is ~18 tok/s because the 2 cores were
shared): decode base 18.3, 18.3, 19.0, 18.2 against untrimmed 18.2, 19.4, 18.5, 18.9;
prefill base 377, 348, 360, 354 against untrimmed 378, 400, 304, 340: no difference
beyond the noise.

Measured (2026-12-03, 2 shared cores, seed 11, 1-4 sequences at a time, <= 24 new tokens,
ctx 2048, 64 MiB host pool, full from request ~15; ``unbudgeted`` slope in MiB per 100
requests; malloc's bytes in use rose ~1 MiB/100 in every variant, its free bytes with the
RSS where no trim gave them back):

- prompts <= 500 tokens, requests 33-71: untrimmed 64.9 (784.6 -> 810.0 MiB; malloc free
  +58.7), no_arena 65.4, no_mem_pattern 65.5, a trim after each request 9.6 (751.0 ->
  754.6). Untrimmed then levels off (0.6 from request 83 to 150), ~55 MiB above the trim.
- prompts <= 1900 tokens, requests 33-110: untrimmed 18.5 (831.1 -> 848.2; malloc free
  +17.1), base 9.4 (774.0 -> 779.5), 69 MiB lower; mmap_threshold alone stays ~30 MiB
  under untrimmed (812 against 842 at request 50); trim_mmap follows base within 0.5 MiB
  to request 61, so a fixed mmap threshold adds nothing to the trim.
  What base still gains comes in steps of ~4 MiB at the same requests as untrimmed's (83,
  101: new shapes) and is neither malloc's bytes in use nor its free ones; trim_thp_off
  follows base within 0.3 MiB to request 90 (the 83 step included): not huge pages.

The last line is ``summary: {json}``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.licence_prompts import LICENCES, TEXTS  # noqa: E402
from bench.slope import least_squares_slope  # noqa: E402

MIB = 2**20
MODEL = "smollm2-135m-instruct"  # prepared (or found) in the models cache when not given
VARIANTS = ("base", "untrimmed", "no_arena", "no_mem_pattern", "same_as_requested",
            "arena_max2", "mmap_threshold", "trim_mmap", "trim_thp_off")
PR_SET_THP_DISABLE = 41  # prctl(2)
M_MMAP_THRESHOLD = -3  # mallopt(3)
BUDGET_REACHED = 0.9


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2
_LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]


def malloc_figures() -> dict[str, int]:
    info = _LIBC.mallinfo2()
    # arena: bytes of the heap arenas (brk and per-thread); hblkhd: mmapped blocks
    return {"malloc_system": info.arena + info.hblkhd, "malloc_in_use": info.uordblks
            + info.hblkhd, "malloc_free": info.fordblks, "malloc_mmapped": info.hblkhd}


def smaps() -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Anonymous", "Private_Dirty"):
            fields[name] = int(rest.split()[0]) * 1024
    fields["file_rss"] = fields.get("Rss", 0) - fields.get("Anonymous", 0)
    return fields


def apply_variant(variant: str) -> None:
    """Changes the engine in this process (before the model loads). Every variant but
    ``base`` is the engine without its heap trim, as it was before the fix."""
    if variant in ("mmap_threshold", "trim_mmap"):
        # a fixed threshold turns glibc's dynamic one off: blocks of 1 MiB and more are
        # always mmapped, and unmapped when freed
        _LIBC.mallopt(M_MMAP_THRESHOLD, 1 * MIB)
    if variant == "trim_thp_off":
        # no transparent huge pages for this process (numpy madvises its large arrays)
        _LIBC.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)
    if variant in ("base", "trim_mmap", "trim_thp_off"):
        return
    from inferos.engine import batch_scheduler

    batch_scheduler.release_free_heap = lambda: False  # type: ignore[assignment]
    if variant in ("untrimmed", "arena_max2", "mmap_threshold"):
        return
    import onnxruntime as ort

    from inferos.engine import runtime

    real = runtime.inference_session

    def session(path: Path | str, so: ort.SessionOptions, providers: Any) -> Any:
        if variant == "no_arena":
            so.enable_cpu_mem_arena = False
        elif variant == "no_mem_pattern":
            so.enable_mem_pattern = False
        elif variant == "same_as_requested":
            # The session's own arena cannot be configured from Python: share the
            # environment's, made with kSameAsRequested (arena_extend_strategy 1).
            ort.create_and_register_allocator(
                ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                  ort.OrtMemType.DEFAULT),
                ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            so.add_session_config_entry("session.use_env_allocators", "1")
        return real(path, so, providers)

    runtime.inference_session = session  # type: ignore[assignment]


class Traffic:
    """The same requests for every variant: prompts, concurrency, lengths from ``seed``."""

    def __init__(self, encode: Callable[[str], list[int]], seed: int, max_prompt: int) -> None:
        self.rng = random.Random(seed)
        text = " ".join((LICENCES / name).read_text(encoding="utf-8") for name in TEXTS)
        self.ids = encode(text)
        self.max_prompt = max_prompt
        self.turns: list[list[int]] = []

    def prompt(self) -> list[int]:
        rng = self.rng
        if self.turns and rng.random() < 0.3:  # a follow-up turn: a prefix-cache hit
            history = rng.choice(self.turns)
            extra = self._window(rng.randint(10, 120))
            prompt = (history + extra)[: self.max_prompt]
        else:
            prompt = self._window(rng.randint(20, self.max_prompt))
        self.turns.append(prompt)
        if len(self.turns) > 32:
            self.turns.pop(rng.randrange(len(self.turns)))
        return prompt

    def _window(self, n: int) -> list[int]:
        start = self.rng.randrange(0, len(self.ids) - n)
        return self.ids[start:start + n]


def run(args: argparse.Namespace) -> dict[str, Any]:
    apply_variant(args.variant)
    from inferos.engine.runtime import EngineOptions, load_model
    from inferos.engine.sampling_params import SamplingParams

    model = load_model(str(args.model), EngineOptions(
        threads=args.threads, ctx_size=args.ctx_size, host_pool_bytes=args.host_pool_bytes))
    traffic = Traffic(model.encode, args.seed, min(args.max_prompt, args.ctx_size - 32))
    if args.tracemalloc:
        tracemalloc.start(8)
    snapshot0: tracemalloc.Snapshot | None = None
    samples: list[dict[str, Any]] = []
    done = 0
    started = time.monotonic()
    rng = random.Random(args.seed + 1)
    while done < args.requests:
        width = min(rng.randint(1, args.max_concurrency), args.requests - done)
        ended: list[BaseException | None] = []
        for _ in range(width):
            params = SamplingParams(max_tokens=rng.randint(1, 24),
                                    temperature=rng.choice([0.0, 0.7]), seed=rng.randrange(99))
            model.scheduler.submit(traffic.prompt(), params, lambda _e: None, ended.append,
                                   runner=False)
        while len(ended) < width:
            model.scheduler.step()
        if any(e is not None for e in ended):
            raise RuntimeError(f"a generation failed: {ended}")
        before = done
        done += width
        if done // args.sample_every > before // args.sample_every or done >= args.requests:
            memory = model.stats()["memory"]
            sample: dict[str, Any] = {
                "requests": done, "rss": memory["rss_bytes"],
                "batch_resident": memory["batch_buffer_resident_bytes"],
                "parked": memory["parked_kv_bytes"], "host_pool": memory["host_pool_bytes"],
                **smaps(), **malloc_figures()}
            if args.tracemalloc:
                sample["python_heap"] = tracemalloc.get_traced_memory()[0]
                if snapshot0 is None and _full(sample, args.warmup):
                    snapshot0 = tracemalloc.take_snapshot()
            sample["unbudgeted"] = sample["rss"] - sample["batch_resident"] - sample["parked"]
            samples.append(sample)
            if args.verbose:
                print(json.dumps({k: (round(v / MIB, 1) if isinstance(v, int) and v > 2**16
                                      else v) for k, v in sample.items()}), flush=True)
    summary = summarize(samples, args)
    summary["variant"] = args.variant
    summary["seconds"] = round(time.monotonic() - started, 1)
    scheduler = model.scheduler.stats(16, 0)
    summary["shapes"] = {"decode_widths": scheduler["steps_by_rows"]}
    summary["heap_trims"] = {"count": scheduler["heap_trims"],
                             "seconds": scheduler["heap_trim_seconds"]}
    if snapshot0 is not None:
        growth = tracemalloc.take_snapshot().compare_to(snapshot0, "lineno")
        summary["python_top_growth"] = [
            f"{stat.size_diff / 1024:+.1f} KiB {stat.traceback[0]}" for stat in growth[:8]]
    return summary


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """Prefill and decode speed of ``--speed-runs`` greedy generations of 128 tokens on
    ~500-token licence prompts no prefix cache can serve (medians, tokens/s)."""
    apply_variant(args.variant)
    from bench.licence_prompts import Prompts, licence_ids
    from inferos.engine.runtime import EngineOptions, load_model
    from inferos.engine.sampling_params import SamplingParams

    model = load_model(str(args.model), EngineOptions(
        threads=args.threads, ctx_size=args.ctx_size, host_pool_bytes=args.host_pool_bytes))
    prompts = Prompts(licence_ids(args.model))
    # speculation off: prompt lookup would make decode speed depend on the text
    model.set_policy(dataclasses.replace(model.policy, speculation=False))
    list(model.generate(prompts.take(64), SamplingParams(max_tokens=8)))  # warm-up
    prefill, decode = [], []
    for _ in range(args.speed_runs):
        prompt = prompts.take(500)
        started = time.perf_counter()
        times = [time.perf_counter() for _ in model.generate(
            prompt, SamplingParams(max_tokens=128, temperature=0.7, seed=1))]
        prefill.append(len(prompt) / (times[0] - started))
        if len(times) > 1:
            decode.append((len(times) - 1) / (times[-1] - times[0]))
    scheduler = model.scheduler.stats(16, 0)
    return {"variant": args.variant, "prefill_tok_s": _median(prefill),
            "heap_trims": scheduler["heap_trims"],
            "heap_trim_seconds": scheduler["heap_trim_seconds"],
            "decode_tok_s": _median(decode), "prefill_runs": [round(x, 1) for x in prefill],
            "decode_runs": [round(x, 1) for x in decode]}


def _median(values: list[float]) -> float | None:
    return round(sorted(values)[len(values) // 2], 1) if values else None


def _full(sample: dict[str, Any], warmup: int) -> bool:
    return sample["requests"] >= warmup and sample["parked"] >= BUDGET_REACHED * \
        sample["host_pool"]


def _slope_per_100(points: list[tuple[int, int]]) -> float | None:
    slope = least_squares_slope(points)
    return None if slope is None else slope * 100 / MIB


def summarize(samples: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    tail = [s for s in samples if _full(s, args.warmup)]
    keys = ["rss", "unbudgeted", "Anonymous", "file_rss", "malloc_system", "malloc_in_use",
            "malloc_mmapped", "batch_resident", "parked"]
    if args.tracemalloc:
        keys.append("python_heap")
    slopes = {k: _round(_slope_per_100([(s["requests"], s[k]) for s in tail])) for k in keys}
    first, last = (tail[0], tail[-1]) if tail else (None, None)
    return {
        "requests": samples[-1]["requests"] if samples else 0,
        "fitted_from_request": first["requests"] if first else None,
        "fitted_samples": len(tail),
        "slope_mib_per_100_requests": slopes,
        "fitted_start_mib": {k: round(first[k] / MIB, 1) for k in keys} if first else None,
        "end_mib": {k: round(last[k] / MIB, 1) for k in keys} if last else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def run_all(args: argparse.Namespace, argv: list[str]) -> list[dict[str, Any]]:
    """Each variant in a child process of its own, with the same arguments."""
    results = []
    rest = [a for a in argv if not a.startswith("--variant")]
    for variant in args.variants.split(","):
        env = dict(os.environ)
        if variant == "arena_max2":
            env["MALLOC_ARENA_MAX"] = "2"
        out = subprocess.run([sys.executable, __file__, *rest, f"--variant={variant}"],
                             env=env, capture_output=True, text=True, check=False)
        line = next((x for x in out.stdout.splitlines()[::-1] if x.startswith("summary: ")),
                    None)
        if line is None:
            print(f"{variant}: failed\n{out.stderr[-2000:]}", flush=True)
            continue
        result = json.loads(line.removeprefix("summary: "))
        print(report(result), flush=True)
        results.append(result)
    return results


def report(summary: dict[str, Any]) -> str:
    slopes = summary["slope_mib_per_100_requests"]
    end = summary["end_mib"] or {}
    return (f"{summary['variant']:<18} {summary['requests']} requests "
            f"({summary['seconds']} s), fitted from request {summary['fitted_from_request']}"
            f" ({summary['fitted_samples']} samples); MiB per 100 requests: "
            + ", ".join(f"{k} {v}" for k, v in slopes.items())
            + f"; end RSS {end.get('rss')} MiB, unbudgeted {end.get('unbudgeted')} MiB")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a prepared model folder (default: SmolLM2 from the models "
                             "cache, $INFEROS_MODELS_DIR, prepared if missing)")
    parser.add_argument("--variant", default="base", choices=(*VARIANTS, "all"))
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="with --variant all: which, comma-separated")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx-size", type=int, default=2048)
    parser.add_argument("--max-prompt", type=int, default=900)
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--host-pool-bytes", type=int, default=64 * MIB)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--speed", action="store_true",
                        help="measure prefill and decode speed instead (3 x 128 new tokens "
                             "on 500-token prompts, medians)")
    parser.add_argument("--speed-runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.model is None:
        from inferos.engine.prepare import ensure_prepared

        args.model = ensure_prepared(MODEL, progress=lambda message: None)
    if args.speed:
        print("summary: " + json.dumps(speed(args), sort_keys=True), flush=True)
        return 0
    if args.variant == "all":
        results = run_all(args, argv)
        print("summary: " + json.dumps(results, sort_keys=True), flush=True)
        return 0
    summary = run(args)
    print(report(summary), flush=True)
    print("summary: " + json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
