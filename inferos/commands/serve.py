"""``inferos serve``: the agent (proxy + controller) in front of a backend.

Which backend, in this order:

1. ``--upstream URL`` (or ``upstream.url`` / ``INFEROS_UPSTREAM``): a Lemonade server or
   anything OpenAI-compatible; the controller reconfigures it through Lemonade's ``/load``.
2. ``--backend llamacpp --model FILE.gguf``: llama.cpp's OpenAI server, started and
   reconfigured blue/green by the controller: llama.cpp's own ``llama-server`` (8 slots)
   where ``scripts/build-llama-server.sh`` built it, else llama-cpp-python's server.
3. Otherwise a Lemonade answering on its default ports (13305, then 8000), unless
   ``--backend engine`` asks for the embedded engine outright.
4. Otherwise the embedded engine: the model is prepared if needed (cached), the engine runs
   as a child process (127.0.0.1:8022 when free) and is stopped with ``serve``. It gets a
   random API key, made here for this run (in its environment, not its command line,
   which every local user can read): it answers only the proxy and the controller, so no
   other local process can go round the proxy's guards to its port.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from inferos.event_loop import run_event_loop

if TYPE_CHECKING:
    from inferos.controller.backend import Backend
    from inferos.controller.config import Config

BACKENDS = ("engine", "llamacpp")
FAULT_SIGNAL_ENV = "INFEROS_FAULT_SIGNAL"
ENGINE_PORT = 8022


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the proxy (and controller) in front of a backend")
    p.add_argument("--upstream", help="backend origin, e.g. http://127.0.0.1:13305 "
                                      "(env INFEROS_UPSTREAM; default: a Lemonade that answers, "
                                      "else the embedded engine)")
    p.add_argument("--backend", choices=BACKENDS,
                   help="a backend Infer-OS runs itself: the embedded engine (default when no "
                        "Lemonade answers) or llama.cpp's server on --model FILE.gguf")
    p.add_argument("--model", help="the embedded engine's model (default "
                                   "smollm2-135m-instruct), or the GGUF file for llamacpp "
                                   "(env INFEROS_MODEL)")
    p.add_argument("--listen", help="proxy listener HOST:PORT (default 127.0.0.1:8020)")
    p.add_argument("--admin", help="admin listener HOST:PORT (default 127.0.0.1:8021)")
    p.add_argument("--passthrough", action="store_true", default=None,
                   help="forward only; observe nothing (env INFEROS_PASSTHROUGH=1)")
    p.add_argument("--config", help="YAML configuration file")
    p.add_argument("--idle-timeout", type=float, help="seconds of upstream silence before "
                                                       "giving up (default 600)")
    p.add_argument("--connect-timeout", type=float, help="seconds to connect upstream")
    p.set_defaults(func=_cmd_serve)


def _say(message: str) -> None:
    print(f"inferos: {message}", file=sys.stderr, flush=True)


async def _serve(args: argparse.Namespace) -> int:
    from inferos.controller.config import load_config

    config = load_config(args.config, overrides={
        "upstream.url": args.upstream,
        "listen.proxy": args.listen,
        "listen.admin": args.admin,
        "passthrough": args.passthrough,
        "upstream.idle_timeout_s": args.idle_timeout,
        "upstream.connect_timeout_s": args.connect_timeout,
        "engine.backend": args.backend,
        "engine.model": args.model,
    })
    from inferos.controller.admin_guard import check_exposure

    # Before anything is prepared or started: an exposed admin API needs its token.
    check_exposure(config.get("listen.admin"), config.get("listen.admin_token"))
    upstream, backend, key = await _choose_backend(config, explicit_backend=args.backend)
    return await _run_agent(config, upstream, backend, key)


async def _choose_backend(config: Config, explicit_backend: str | None
                          ) -> tuple[str, Backend, str | None]:
    """The proxy's first upstream ("" when the controller starts the backend), the
    backend the controller tunes, and that backend's API key when serve made one."""
    from inferos.controller.lemonade_backend import LemonadeBackend
    from inferos.errors import ConfigError
    from inferos.proxy.discovery import LEMONADE_DEFAULTS, find_lemonade

    upstream = config.get("upstream.url")
    backend = config.get("engine.backend")
    if backend not in BACKENDS:
        raise ConfigError(f"one of {', '.join(BACKENDS)}", key="engine.backend")
    if upstream is not None:
        return upstream, LemonadeBackend(upstream), None
    if backend == "llamacpp":
        return "", _llamacpp_backend(config), None
    if explicit_backend is None:
        found = await asyncio.to_thread(find_lemonade)
        if found is not None:
            _say(f"Lemonade answers at {found}; proxying to it")
            return found, LemonadeBackend(found), None
        _say(f"no Lemonade answered at {' and '.join(LEMONADE_DEFAULTS)}; starting the "
             "embedded engine (give a backend with --upstream URL or INFEROS_UPSTREAM=URL)")
    key = secrets.token_urlsafe(32)
    return "", await _engine_backend(config, key), key


def _llamacpp_backend(config: Config) -> Backend:
    from inferos.controller.backend_child import (
        llama_cpp_python_launcher,
        llama_server_launcher,
    )
    from inferos.controller.decisions import starting_settings
    from inferos.controller.llama_server import find_llama_server
    from inferos.controller.managed_backend import LLAMACPP, ManagedBackend
    from inferos.errors import ConfigError

    model = config.get("engine.model")
    if model is None or not Path(model).is_file():
        raise ConfigError("--backend llamacpp needs --model FILE.gguf (an existing file)",
                          key="engine.model")
    path = Path(model).resolve()
    alias = path.stem
    binary = find_llama_server()
    if binary is not None:
        _say(f"llamacpp backend: {binary.describe()} ({binary.path})")
        launcher = llama_server_launcher(binary, str(path), alias)
    else:
        _say("llamacpp backend: llama-server is not built (scripts/build-llama-server.sh); "
             "running llama-cpp-python's server")
        launcher = llama_cpp_python_launcher(str(path), alias)
    return ManagedBackend(LLAMACPP, launcher, starting_settings(config.policy()))


async def _engine_backend(config: Config, api_key: str) -> Backend:
    from inferos.controller.backend_child import engine_launcher
    from inferos.controller.decisions import starting_settings
    from inferos.controller.managed_backend import ENGINE, ManagedBackend
    from inferos.controller.policy_report import live_keys
    from inferos.engine.prepare import DEFAULT_PRECISION, ensure_prepared

    name = config.get("engine.model") or "smollm2-135m-instruct"
    precision = config.get("engine.precision")
    if Path(name).is_dir():
        model = str(Path(name).resolve())
    else:
        folder = await asyncio.to_thread(ensure_prepared, name, precision, progress=_say)
        # The engine knows its models by name in the default precision; others by folder.
        model = name if precision == DEFAULT_PRECISION else str(folder)
    policy = config.policy()
    return ManagedBackend(ENGINE, engine_launcher(model), starting_settings(policy),
                          live=live_keys(policy), preferred_port=ENGINE_PORT,
                          api_key=api_key)


async def _run_agent(config: Config, upstream: str, backend: Backend,
                     upstream_key: str | None = None) -> int:
    from inferos.controller.agent import Agent

    settings = dataclasses.replace(config.proxy_settings(upstream),
                                   upstream_api_key=upstream_key)
    agent = Agent(settings, config.policy(),
                  config.controller_settings(), backend, profiles=config.profiles,
                  admin_token=config.get("listen.admin_token"),
                  allowed_origins=config.get("listen.allowed_origins"))
    await agent.start()
    proxy = agent.proxy
    mode = "passthrough" if proxy.data_plane.snapshot.passthrough else "observing"
    _say(f"proxy on {proxy.proxy_url} -> {agent.runtime.upstream} ({mode}); control API, "
         f"metrics and health on {proxy.admin_url}")
    _say(f"dashboard: {proxy.admin_url}/")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if os.environ.get(FAULT_SIGNAL_ENV) == "1" and hasattr(signal, "SIGUSR1"):
        # Test equipment for bench/ab.py's fallback criterion: only a process of the same
        # user can send a signal, and nothing turns it on but this variable.
        loop.add_signal_handler(signal.SIGUSR1, agent.controller.inject_fault)
        _say(f"{FAULT_SIGNAL_ENV}=1: SIGUSR1 injects a controller fault (test equipment)")
    try:
        await stop.wait()
    finally:
        await agent.stop()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    return run_event_loop(_serve(args))
