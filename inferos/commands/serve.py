"""``inferos serve``: the proxy in front of a backend."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from inferos.event_loop import run_event_loop

if TYPE_CHECKING:
    from inferos.controller.config import Config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the proxy (and controller) in front of a backend")
    p.add_argument("--upstream", help="backend origin, e.g. http://127.0.0.1:13305 "
                                      "(env INFEROS_UPSTREAM; default: a Lemonade that answers)")
    p.add_argument("--listen", help="proxy listener HOST:PORT (default 127.0.0.1:8020)")
    p.add_argument("--admin", help="admin listener HOST:PORT (default 127.0.0.1:8021)")
    p.add_argument("--passthrough", action="store_true", default=None,
                   help="forward only; observe nothing (env INFEROS_PASSTHROUGH=1)")
    p.add_argument("--config", help="YAML configuration file")
    p.add_argument("--idle-timeout", type=float, help="seconds of upstream silence before "
                                                       "giving up (default 600)")
    p.add_argument("--connect-timeout", type=float, help="seconds to connect upstream")
    p.set_defaults(func=_cmd_serve)


async def _serve(args: argparse.Namespace) -> int:
    from inferos.controller.config import load_config
    from inferos.proxy.discovery import LEMONADE_DEFAULTS, find_lemonade

    config = load_config(args.config, overrides={
        "upstream.url": args.upstream,
        "listen.proxy": args.listen,
        "listen.admin": args.admin,
        "passthrough": args.passthrough,
        "upstream.idle_timeout_s": args.idle_timeout,
        "upstream.connect_timeout_s": args.connect_timeout,
    })
    upstream = config.get("upstream.url")
    if upstream is None:
        upstream = await asyncio.to_thread(find_lemonade)
    if upstream is not None:
        return await _run_proxy(config, upstream)
    # The embedded default: no backend given and no Lemonade answering.
    from inferos.engine.child import embedded_engine

    tried = " and ".join(LEMONADE_DEFAULTS)
    print(f"inferos: no Lemonade answered at {tried}; starting the embedded engine "
          "(give a backend with --upstream URL or INFEROS_UPSTREAM=URL)", file=sys.stderr)
    async with embedded_engine() as engine:
        return await _run_proxy(config, engine.url)


async def _run_proxy(config: Config, upstream: str) -> int:
    from inferos.proxy.server import ProxyServer

    server = ProxyServer(config.proxy_settings(upstream))
    await server.start()
    mode = "passthrough" if server.mode.passthrough else "observing"
    print(f"inferos: proxy on {server.proxy_url} -> {upstream} ({mode}); "
          f"metrics and health on {server.admin_url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    return run_event_loop(_serve(args))
