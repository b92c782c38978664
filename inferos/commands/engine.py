"""``inferos engine``: the embedded engine's Lemonade-compatible server, in the foreground.

The live policy's flags (``--recent-window``, ``--sink-tokens``, ``--level-thresholds``,
``--max-delta-ppl``, ``--host-pool-bytes``, ``--kv-allow-evict``, ``--max-batch``,
``--no-speculation``) are its start values,
version 0; ``POST /inferos/v1/policy`` changes them while the engine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from inferos.event_loop import run_event_loop

# How often a child engine checks that the `inferos serve` that started it still lives.
PARENT_POLL_S = 0.5


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("engine", help="run the embedded engine (Lemonade API on ONNX Runtime)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8022, help="port (default 8022; 0 = any free)")
    p.add_argument("--model", default=None,
                   help="model name or prepared folder, loaded at start "
                        "(default smollm2-135m-instruct)")
    p.add_argument("--ctx-size", type=int, default=None,
                   help="context size in tokens (default 4096; clamped to the model's maximum)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--provider", default=None,
                   help="execution provider: cpu, dml, cuda or an onnxruntime name "
                        "(default: the best available)")
    p.add_argument("--kv-precision", default=None, help="KV cache precision (default fp32)")
    p.add_argument("--host-pool-bytes", default=None,
                   help="memory for parked KV (prefix cache) before it is quantized or "
                        "evicted, e.g. 512MiB (default: the policy's io.host_pool_bytes, "
                        "4096MiB; live)")
    # Defaults are the kvstore's, resolved when the engine starts (importing them here
    # would load numpy and aiohttp for every command); the help repeats them, and
    # tests/engine/test_live_policy.py checks that it says what the code does.
    p.add_argument("--recent-window", type=int, default=None,
                   help="last tokens of each sequence kept exact (the policy's "
                        "kv.recent_window; default 64; live)")
    p.add_argument("--sink-tokens", type=int, default=None,
                   help="first tokens of each sequence kept exact (the policy's "
                        "kv.sink_tokens; default 4; live)")
    p.add_argument("--level-thresholds", default=None, metavar="L1,L2,L3",
                   help="importance below which parked KV goes to INT8, INT4, evicted (the "
                        "policy's kv.level_thresholds; default 0.7,0.5,0.3; live)")
    p.add_argument("--max-delta-ppl", type=float, default=None,
                   help="quality budget of parked KV, estimated ΔPPL (the policy's "
                        "quality.max_delta_ppl; default 0.5; live)")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="never reuse the KV of an earlier prompt's prefix")
    p.add_argument("--max-batch", type=int, default=None,
                   help="most sequences decoded together in one run (the policy's "
                        "scheduler.max_batch; default 8; 1 = one request at a time; live)")
    p.add_argument("--no-speculation", dest="speculation", action="store_false",
                   help="never draft tokens by prompt lookup (the policy's "
                        "speculation.enabled; live)")
    p.add_argument("--kv-allow-evict", action="store_true",
                   help="a context that outgrows --ctx-size evicts its least important "
                        "tokens instead of ending (the policy's kv.allow_evict; live)")
    # INFEROS_ENGINE_API_KEY first: inferos serve sets it for its child, and a
    # LEMONADE_API_KEY the user exported for clients must not decide the child's key.
    p.add_argument("--api-key", default=os.environ.get("INFEROS_ENGINE_API_KEY")
                   or os.environ.get("LEMONADE_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' (env INFEROS_ENGINE_API_KEY, "
                        "else LEMONADE_API_KEY)")
    p.add_argument("--control-token",
                   default=os.environ.get("INFEROS_ENGINE_CONTROL_TOKEN") or None,
                   help="require 'X-Inferos-Control-Token: TOKEN' on /inferos/v1/policy "
                        "(env INFEROS_ENGINE_CONTROL_TOKEN)")
    p.add_argument("--allowed-origins",
                   default=os.environ.get("INFEROS_ALLOWED_ORIGINS") or "",
                   help="browser origins allowed beside loopback ones, comma-separated, "
                        "'*' for any (env INFEROS_ALLOWED_ORIGINS; Lemonade's "
                        "LEMONADE_ALLOWED_ORIGINS)")
    p.add_argument("--exit-with-parent", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_engine)


def _parent_gone(pid: int) -> bool:
    if os.name != "nt":
        return os.getppid() != pid  # reparented: the parent has exited
    import psutil

    return not psutil.pid_exists(pid)


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if _parent_gone(pid):
            print("inferos engine: the process that started it is gone; stopping",
                  file=sys.stderr, flush=True)
            stop.set()
            return
        await asyncio.sleep(PARENT_POLL_S)


async def _engine(args: argparse.Namespace) -> int:
    from inferos.engine.api_errors import ApiError
    from inferos.engine.cors import parse_origins
    from inferos.engine.engine_policy import DEFAULT_MAX_DELTA_PPL, EnginePolicy, parse_thresholds
    from inferos.engine.load_options import normalize_provider
    from inferos.engine.prepared_models import DEFAULT_MODEL, catalog_for, load_model
    from inferos.engine.runtime import EngineOptions, best_provider
    from inferos.engine.server import EngineServer, EngineSettings
    from inferos.errors import ConfigError
    from inferos.tasks import TaskGroup

    options = EngineOptions()
    try:
        provider = normalize_provider(args.provider) if args.provider else None
    except ApiError as exc:
        raise ConfigError(exc.message, key="provider") from exc
    if args.ctx_size is not None and args.ctx_size <= 0:
        raise ConfigError("must be a positive number of tokens", key="ctx-size")
    host_pool_bytes = options.host_pool_bytes
    if args.host_pool_bytes is not None:
        from inferos.controller.config import byte_size

        try:
            host_pool_bytes = byte_size(args.host_pool_bytes)
        except ValueError as exc:
            raise ConfigError(str(exc), key="host-pool-bytes") from exc
    options = EngineOptions(
        provider=provider, threads=args.threads,
        graph_optimization=options.graph_optimization,
        kv_precision=args.kv_precision or options.kv_precision,
        ctx_size=args.ctx_size or options.ctx_size,
        prefix_cache=args.prefix_cache, host_pool_bytes=host_pool_bytes,
        kv_allow_evict=args.kv_allow_evict)
    from inferos.kvstore.levels import DEFAULT_RECENT_WINDOW, DEFAULT_SINK_TOKENS, LevelThresholds

    window = DEFAULT_RECENT_WINDOW if args.recent_window is None else args.recent_window
    sinks = DEFAULT_SINK_TOKENS if args.sink_tokens is None else args.sink_tokens
    for key, value in (("recent-window", window), ("sink-tokens", sinks)):
        if value < 0:
            raise ConfigError("must not be negative", key=key)
    budget = DEFAULT_MAX_DELTA_PPL if args.max_delta_ppl is None else args.max_delta_ppl
    if not 0 <= budget < float("inf"):  # also refuses nan
        raise ConfigError("must be a finite number >= 0", key="max-delta-ppl")
    thresholds = parse_thresholds(args.level_thresholds) if args.level_thresholds \
        else LevelThresholds()
    from inferos.engine.engine_policy import DEFAULT_MAX_BATCH, MAX_BATCH_LIMIT

    max_batch = DEFAULT_MAX_BATCH if args.max_batch is None else args.max_batch
    if not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise ConfigError(f"must be from 1 to {MAX_BATCH_LIMIT}", key="max-batch")
    policy = EnginePolicy.starting(
        provider or best_provider(), recent_window=window, sink_tokens=sinks,
        thresholds=thresholds, allow_evict=args.kv_allow_evict,
        host_pool_bytes=host_pool_bytes, max_delta_ppl=budget, max_batch=max_batch,
        speculation=args.speculation)
    model = args.model or DEFAULT_MODEL
    catalog, model_id = catalog_for(model)
    settings = EngineSettings(model=model_id, host=args.host, port=args.port, options=options,
                              api_key=args.api_key, policy=policy,
                              control_token=args.control_token,
                              allowed_origins=parse_origins(args.allowed_origins))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = TaskGroup()
    async with EngineServer(settings, catalog, load_model) as server:
        state = server.state.slot.state
        loaded = f"{state.name} (context {state.ctx_size})" if state else "no model"
        print(f"inferos engine: Lemonade API on {server.url}/api/v1 with {loaded}",
              file=sys.stderr, flush=True)
        tasks.start(_stop_on_halt(server.state.halted, stop), name="halt")
        if args.exit_with_parent is not None:
            tasks.start(_watch_parent(args.exit_with_parent, stop), name="watch-parent")
        try:
            await stop.wait()
        finally:
            await tasks.stop()
    return 0


async def _stop_on_halt(halted: asyncio.Event, stop: asyncio.Event) -> None:
    """POST halt stops the process as SIGTERM does."""
    await halted.wait()
    stop.set()


def _cmd_engine(args: argparse.Namespace) -> int:
    return run_event_loop(_engine(args))
